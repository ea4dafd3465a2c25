//! `switchboard serve`: wires config, store, flows, SIP, media and HTTP together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use crate::api::{Api, Credentials};
use crate::call::{dispatch, CallServices, Registry};
use crate::config::Config;
use crate::events::Events;
use crate::media::tts::Tts;
use crate::media::{MediaConfig, MediaEngine};
use crate::messaging::providers::{ProviderContext, Providers};
use crate::messaging::webhook::Webhook;
use crate::messaging::Conversations;
use crate::routing::Router;
use crate::sip::{endpoint, CoreConfig};
use crate::store::{redact, Store};

pub struct Running {
    pub sip_udp: SocketAddr,
    pub sip_tcp: SocketAddr,
    pub http: SocketAddr,
}

pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    crate::routing::set_function_urls(cfg.functions.clone());
    let router = Arc::new(Router::from_config(&cfg)?);
    for f in router.flows() {
        tracing::info!(flow = %f.name, sid = %f.sid, "flow loaded");
    }
    let db_url = cfg.database_url();
    let store = Store::open(&db_url).await?;
    tracing::info!(database = %redact(&db_url), "store open");
    let stored = crate::api::load_stored_flows(&store, &router).await?;
    if stored > 0 {
        tracing::info!(flows = stored, "flows created through the REST API loaded");
    }
    let credentials = Credentials::resolve(&cfg.api, &cfg.data_dir)?;
    let http_client = crate::channel::HttpClient::new(Some((
        credentials.account_sid.clone(),
        credentials.auth_token().to_string(),
    )));
    let events = Events::start(
        &cfg.events,
        &credentials.account_sid,
        http_client.client().clone(),
    )?;
    if events.is_some() {
        tracing::info!(sinks = cfg.events.sinks.len(), "event streams on");
    }
    tokio::spawn(crate::store::retention::run(
        store.clone(),
        cfg.retention.clone(),
        events.clone(),
    ));
    let runner = crate::channel::Runner {
        store,
        http: http_client,
        router: router.clone(),
        events,
    };

    let core_cfg = CoreConfig::from_sip(
        &cfg.sip,
        format!("switchboard/{}", env!("CARGO_PKG_VERSION")),
    )?;
    let ep = endpoint::start(cfg.sip.bind, core_cfg).await?;
    // Outbound providers by number; messages they receive themselves (SMPP) come back here.
    let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(1024);
    let sip_handle = ep.handle.clone();
    let sip_factory = move |p: &crate::config::ProviderConfig| -> Result<
        Arc<dyn crate::messaging::MessageSink>,
        crate::messaging::providers::ProviderError,
    > {
        let trunk = p
            .trunk
            .clone()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                crate::messaging::providers::ProviderError::invalid(
                    p,
                    "kind = \"sip\" needs trunk = \"sip:host[:port]\"",
                )
            })?;
        Ok(Arc::new(crate::sip::message_sink::SipMessageSink {
            handle: sip_handle.clone(),
            trunk,
        }))
    };
    let providers = Arc::new(Providers::from_config_with(
        &cfg.messaging,
        &ProviderContext {
            http: runner.http.client().clone(),
            inbound: inbound_tx.clone(),
        },
        &sip_factory,
    )?);
    if providers.is_empty() {
        tracing::info!("no messaging provider configured: send-message widgets will fail");
    }
    let conversations = Arc::new(Conversations::new(runner.clone(), providers.clone()));
    // Reply timeouts are in the store: they fire after a restart too.
    tokio::spawn(conversations.clone().run_timeouts());
    tokio::spawn(conversations.clone().run_inbound(inbound_rx));

    let tts = Arc::new(Tts::new(&cfg.data_dir, &cfg.tts.command, cfg.tts.speed_wpm));
    if !tts.engine_available() {
        tracing::warn!(command = %cfg.tts.command, "text-to-speech engine not found: only pre-rendered prompts can be spoken (install espeak-ng)");
    }
    let workers = match cfg.media.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let media = MediaEngine::new(MediaConfig {
        bind_ip: cfg.media.rtp_bind,
        port_min: cfg.media.rtp_port_min,
        port_max: cfg.media.rtp_port_max,
        workers,
    });
    // HTTP is bound before calls start so recording URLs can name its real address.
    let listener = tokio::net::TcpListener::bind(cfg.http.bind)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http.bind))?;
    let http = listener.local_addr()?;
    let public_url = match &cfg.api.public_url {
        Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
        _ => format!("http://{http}"),
    };
    let recordings = crate::call::recordings::Recordings {
        dir: cfg.data_dir.join("recordings"),
        public_url: public_url.clone(),
        account_sid: credentials.account_sid.clone(),
    };
    let svc = Arc::new(CallServices {
        messages: Some(inbound_tx.clone()),
        sip: ep.handle.clone(),
        media,
        prompts: Arc::new(crate::call::prompts::Prompts::new(
            tts,
            runner.http.client().clone(),
            &cfg.data_dir,
        )),
        recordings: recordings.clone(),
        runner: runner.clone(),
        router,
        registry: Arc::new(Registry::default()),
        public_ip: cfg.media.public_ip,
        max_calls: cfg.sip.max_calls,
        speech: crate::speech::from_config(&cfg.speech),
        account_sid: credentials.account_sid.clone(),
        auth_token: credentials.auth_token().to_string(),
    });
    tokio::spawn(dispatch(svc, ep.events));

    let webhook = Arc::new(Webhook::new(
        conversations,
        &credentials.account_sid,
        credentials.auth_token(),
        &public_url,
        cfg.messaging.validate_signatures,
    ));
    if !cfg.messaging.validate_signatures {
        tracing::warn!("[messaging] validate_signatures = false: anyone can post inbound messages");
    }
    let api = Arc::new(
        Api::new(credentials, &public_url, runner, providers)
            .with_webhook(webhook)
            .with_recordings(recordings),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, crate::api::router(api)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Running {
        sip_udp: ep.udp_addr,
        sip_tcp: ep.tcp_addr,
        http,
    })
}
