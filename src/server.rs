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
use crate::sip::acl::Acl;
use crate::sip::{endpoint, CoreConfig, Endpoint};
use crate::store::{redact, Store};

/// A started gateway: where it listens, and how to stop it.
pub struct Running {
    /// The SIP UDP socket's address.
    pub sip_udp: SocketAddr,
    /// The SIP TCP listener's address.
    pub sip_tcp: SocketAddr,
    /// The SIP-over-TLS listener, when `[sip] tls_bind` is set.
    pub sip_tls: Option<SocketAddr>,
    /// The HTTP listener's address (REST API, webhook, `/metrics`).
    pub http: SocketAddr,
    /// The metrics listener, when `[metrics] bind` gives it one of its own.
    pub metrics: Option<SocketAddr>,
    /// Stops the gateway gracefully.
    pub shutdown: Shutdown,
}

/// A graceful stop: refuse new calls and connections, let calls in progress finish (up to the
/// drain time, then hang them up), deliver queued events, and return.
pub struct Shutdown {
    calls: Arc<CallServices>,
    http_stop: tokio::sync::watch::Sender<bool>,
    http_done: tokio::task::JoinHandle<()>,
    events: Option<Events>,
    drain: std::time::Duration,
}

impl Shutdown {
    /// Stop, as described on [`Shutdown`]; returns when done.
    pub async fn run(self) {
        use std::sync::atomic::Ordering;
        self.calls.draining.store(true, Ordering::Relaxed);
        let _ = self.http_stop.send(true);
        let registry = &self.calls.registry;
        let calls = registry.len();
        tracing::info!(
            calls,
            drain_secs = self.drain.as_secs(),
            "shutting down: new calls get 503, calls in progress may finish"
        );
        let deadline = tokio::time::Instant::now() + self.drain;
        // Trunks stop sending new calls while those in progress finish.
        self.calls
            .sip
            .unregister_all(
                std::time::Duration::from_secs(3)
                    .min(self.drain.max(std::time::Duration::from_secs(1))),
            )
            .await;
        while !registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let left = registry.call_ids();
        if !left.is_empty() {
            tracing::info!(
                calls = left.len(),
                "drain time over: hanging up the calls still in progress"
            );
            for call_id in &left {
                // BYE from us; the flow then sees the call end as a hangup and stores it.
                self.calls.sip.send(crate::sip::Command::Hangup {
                    call_id: call_id.clone(),
                });
                registry.signal(call_id, crate::call::CallSignal::Hangup);
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while !registry.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Let the BYEs leave before the process does.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        if let Some(ev) = &self.events {
            if !ev.flush(std::time::Duration::from_secs(5)).await {
                tracing::warn!("shutting down with events still undelivered");
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.http_done).await;
        tracing::info!("shut down");
    }
}

/// Start the gateway (`switchboard serve`): flows, store, events, SIP, messaging, calls, the
/// API and metrics, in that order. Returns once every listener is bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    private_data_dir(&cfg.data_dir)?;
    let router = load_flows(&cfg)?;
    let store = open_store(&cfg, &router).await?;
    let credentials = Credentials::resolve(&cfg.api, &cfg.data_dir)?;
    let http_client = crate::runner::HttpClient::new(Some((
        credentials.account_sid.clone(),
        credentials.auth_token().to_string(),
    )));
    let events = start_events(&cfg, &credentials, &http_client)?;
    recover_after_crash(&store, &cfg, &credentials.account_sid, events.as_ref()).await?;
    store.watch_health(
        std::time::Duration::from_secs(1),
        (cfg.database.min_free_mb > 0).then(|| crate::store::DiskFloor {
            dir: cfg.data_dir.clone(),
            min_free_bytes: cfg.database.min_free_mb.saturating_mul(1 << 20),
        }),
    );
    tokio::spawn(crate::retention::run(
        store.clone(),
        cfg.retention.clone(),
        events.clone(),
    ));
    tokio::spawn(refresh_numbers(router.clone(), store.clone()));
    let runner = crate::runner::Runner {
        store,
        http: http_client,
        router: router.clone(),
        events: events.clone(),
        replies: Default::default(),
    };
    let (ep, outbound) = start_sip(&cfg).await?;
    let messaging = start_messaging(&cfg, &runner, &ep.handle)?;
    // HTTP is bound before calls start so recording URLs can name its real address.
    let listener = tokio::net::TcpListener::bind(cfg.http.bind)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http.bind))?;
    let http = listener.local_addr()?;
    let public_url = match &cfg.api.public_url {
        Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
        _ => format!("http://{http}"),
    };
    // The API's credentials may be sent (add_twilio_auth) only to the API itself.
    runner.http.set_own_api(&public_url, http);
    let recordings = crate::call::recordings::Recordings {
        dir: cfg.data_dir.join("recordings"),
        public_url: public_url.clone(),
        account_sid: credentials.account_sid.clone(),
    };
    let calls = start_calls(
        &cfg,
        &runner,
        router,
        &ep,
        &messaging,
        &recordings,
        &credentials,
        outbound,
    );
    tokio::spawn(dispatch(calls.clone(), ep.events));
    let api = build_api(
        &cfg,
        credentials,
        &public_url,
        runner,
        messaging,
        recordings,
        calls.clone(),
    );
    let metrics = start_metrics_listener(&cfg).await?;
    let (http_stop, stop) = tokio::sync::watch::channel(false);
    let drain = std::time::Duration::from_secs(cfg.shutdown.drain_secs);
    let http_done = tokio::spawn(crate::api::listener::serve(
        listener,
        crate::api::router(api),
        http_limits(&cfg),
        stop,
        drain,
    ));
    Ok(Running {
        sip_udp: ep.udp_addr,
        sip_tcp: ep.tcp_addr,
        sip_tls: ep.tls_addr,
        http,
        metrics,
        shutdown: Shutdown {
            calls,
            http_stop,
            http_done,
            events,
            drain,
        },
    })
}

/// Flows from files and `[[routes]]`, and Function SIDs mapped to URLs.
fn load_flows(cfg: &Config) -> anyhow::Result<Arc<Router>> {
    crate::routing::set_function_urls(cfg.functions.clone());
    let router = Arc::new(Router::from_config(cfg)?);
    for f in router.flows() {
        tracing::info!(flow = %f.name, sid = %f.sid, "flow loaded");
    }
    Ok(router)
}

/// The database, written as this node, and the flows created through the REST API.
async fn open_store(cfg: &Config, router: &Router) -> anyhow::Result<Store> {
    let db_url = cfg.database_url();
    let node = node_id(&cfg.data_dir)?;
    let store = Store::open(&db_url).await?.on_node(&node);
    tracing::info!(database = %redact(&db_url), %node, "store open");
    let stored = router.load_stored(&store).await?;
    if stored > 0 {
        tracing::info!(flows = stored, "flows created through the REST API loaded");
    }
    router.refresh_numbers(&store).await?;
    Ok(store)
}

/// How often each node rereads the phone numbers (changes made through another node).
const NUMBERS_REFRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// Keep the router's API numbers current with the store, for changes made on other nodes.
async fn refresh_numbers(router: Arc<Router>, store: Store) {
    let mut tick = tokio::time::interval(NUMBERS_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = router.refresh_numbers(&store).await {
            tracing::debug!(error = %e, "phone numbers not refreshed");
        }
    }
}

fn start_events(
    cfg: &Config,
    credentials: &Credentials,
    http: &crate::runner::HttpClient,
) -> anyhow::Result<Option<Events>> {
    let events = Events::start(&cfg.events, &credentials.account_sid, http.client().clone())?;
    if events.is_some() {
        tracing::info!(sinks = cfg.events.sinks.len(), "event streams on");
    }
    Ok(events)
}

/// The SIP endpoint, with its trunks resolved, registered and kept alive, and the trunks
/// calls may go out through.
async fn start_sip(
    cfg: &Config,
) -> anyhow::Result<(Endpoint, Option<crate::call::outbound::Outbound>)> {
    let core_cfg = CoreConfig::from_sip(
        &cfg.sip,
        format!("switchboard/{}", env!("CARGO_PKG_VERSION")),
        sms_trunk_sources(cfg).await?,
    )?
    .with_trunks(&cfg.trunks, &cfg.users)?;
    let tls = match cfg.sip.tls_bind {
        None => None,
        Some(bind) => {
            let (Some(cert), Some(key)) = (&cfg.sip.tls_cert, &cfg.sip.tls_key) else {
                anyhow::bail!("[sip] tls_bind needs tls_cert and tls_key (PEM files)");
            };
            Some(endpoint::TlsListen {
                bind,
                acceptor: endpoint::tls_acceptor(cert, key)?,
            })
        }
    };
    let ep = endpoint::start(cfg.sip.bind, core_cfg, tls).await?;
    let trunks = resolve_trunks(cfg, &ep.handle).await?;
    register_with_trunks(&trunks, &ep.handle);
    keep_trunks_alive(&trunks, &ep.handle);
    let outbound = outbound_trunks(cfg, &trunks);
    Ok((ep, outbound))
}

/// A trunk with its address resolved (once, at start) for its registration, its keep-alives
/// and the calls that go out through it.
struct ResolvedTrunk<'a> {
    cfg: &'a crate::config::TrunkConfig,
    peer: crate::sip::Peer,
    /// `host:port` it was resolved from.
    target: String,
    /// The host of its `uri` as written (the registrar's and the Request-URI's host).
    host: String,
}

/// Resolve every trunk's `uri` once. A trunk that registers must resolve (else the gateway
/// does not start); any other whose host does not resolve now is logged and left out (it may
/// only ever send us calls).
async fn resolve_trunks<'a>(
    cfg: &'a Config,
    sip: &crate::sip::SipHandle,
) -> anyhow::Result<Vec<ResolvedTrunk<'a>>> {
    let mut out = Vec::new();
    for t in &cfg.trunks {
        let Some(target) = trunk_target(t) else {
            if t.register {
                anyhow::bail!("trunk {:?}: bad uri {:?}", t.name, t.uri);
            }
            continue;
        };
        let addr = match tokio::net::lookup_host(&target).await.map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            Ok(None) if t.register => {
                anyhow::bail!("trunk {:?}: {target} has no address", t.name)
            }
            Err(e) if t.register => {
                anyhow::bail!("trunk {:?}: cannot resolve {target}: {e}", t.name)
            }
            _ => {
                tracing::warn!(trunk = %t.name, %target, "trunk host does not resolve: no keep-alives or calls out through it");
                continue;
            }
        };
        let transport = trunk_transport(t, addr, sip)?;
        out.push(ResolvedTrunk {
            cfg: t,
            peer: crate::sip::Peer { addr, transport },
            host: trunk_host(t).unwrap_or(&target).to_string(),
            target,
        });
    }
    Ok(out)
}

/// OPTIONS keep-alives to each trunk with `keepalive_secs`.
fn keep_trunks_alive(trunks: &[ResolvedTrunk<'_>], sip: &crate::sip::SipHandle) {
    for t in trunks.iter().filter(|t| t.cfg.keepalive_secs > 0) {
        sip.keepalive(crate::sip::keepalive::KeepaliveSpec {
            trunk: t.cfg.name.clone(),
            peer: t.peer,
            uri: format!("sip:{}", t.target),
            interval: std::time::Duration::from_secs(t.cfg.keepalive_secs),
        });
    }
}

/// The host (and port, when written) of a trunk's `uri`, as written.
fn trunk_host(t: &crate::config::TrunkConfig) -> Option<&str> {
    t.uri
        .trim()
        .strip_prefix("sip:")
        .and_then(|r| r.split([';', '?']).next())
        .map(|r| r.rsplit('@').next().unwrap_or(r))
}

/// `host:port` of a trunk's `uri`: 5060 by default, 5061 for `transport=tls`.
fn trunk_target(t: &crate::config::TrunkConfig) -> Option<String> {
    let target = endpoint::hostport_of(&t.uri)?;
    let host = trunk_host(t).unwrap_or("");
    let named_port = target.strip_suffix(":5060").is_none() || host.ends_with(":5060");
    Some(if t.transport() == "tls" && !named_port {
        format!("{}:5061", target.trim_end_matches(":5060"))
    } else {
        target
    })
}

/// The transport a trunk's `uri` names; for TCP and TLS the endpoint may connect to `addr`
/// itself (TLS verifying the trunk's certificate against `tls_ca` or the system roots).
fn trunk_transport(
    t: &crate::config::TrunkConfig,
    addr: SocketAddr,
    sip: &crate::sip::SipHandle,
) -> anyhow::Result<crate::sip::Transport> {
    use crate::sip::Transport;
    Ok(match t.transport().as_str() {
        "tcp" => {
            sip.allow_outbound(addr, endpoint::Outbound::Tcp);
            Transport::Tcp
        }
        "tls" => {
            let host = trunk_target(t)
                .and_then(|h| {
                    h.rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                })
                .unwrap_or_default();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| anyhow::anyhow!("trunk {:?}: {host:?} is no TLS name: {e}", t.name))?;
            let connector = endpoint::tls_connector(t.tls_ca.as_deref())?;
            sip.allow_outbound(addr, endpoint::Outbound::Tls { connector, name });
            Transport::Tls
        }
        _ => Transport::Udp,
    })
}

/// Start a registration with each `register = true` trunk (kept and refreshed by the SIP core).
fn register_with_trunks(trunks: &[ResolvedTrunk<'_>], sip: &crate::sip::SipHandle) {
    for t in trunks.iter().filter(|t| t.cfg.register) {
        sip.register(crate::sip::register::RegistrationSpec {
            trunk: t.cfg.name.clone(),
            peer: t.peer,
            registrar: format!("sip:{}", t.host),
            username: t.cfg.username.clone().unwrap_or_default(),
            password: t.cfg.password.clone().unwrap_or_default(),
            expires: t.cfg.register_expires,
        });
        tracing::info!(trunk = %t.cfg.name, registrar = %t.peer.addr, "registering with trunk");
    }
}

/// What messaging hands the layers above it.
struct Messaging {
    providers: Arc<Providers>,
    conversations: Arc<Conversations>,
    /// Inbound messages that arrive outside the webhook (SIP MESSAGE, SMPP).
    inbound: tokio::sync::mpsc::Sender<crate::messaging::InboundMessage>,
}

/// Outbound providers by number, and the conversations they feed; messages providers receive
/// themselves (SMPP, SIP MESSAGE) come back through `inbound`.
fn start_messaging(
    cfg: &Config,
    runner: &crate::runner::Runner,
    sip: &crate::sip::SipHandle,
) -> anyhow::Result<Messaging> {
    let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(1024);
    let sip_handle = sip.clone();
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
        Ok(Arc::new(crate::messaging::providers::sip::SipMessageSink {
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
    Ok(Messaging {
        providers,
        conversations,
        inbound: inbound_tx,
    })
}

fn start_media(cfg: &Config) -> Arc<MediaEngine> {
    let workers = match cfg.media.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    MediaEngine::new(MediaConfig {
        bind_ip: cfg.media.rtp_bind,
        port_min: cfg.media.rtp_port_min,
        port_max: cfg.media.rtp_port_max,
        workers,
    })
}

/// The trunks calls may go out through; None without `[[trunks]]`.
fn outbound_trunks(
    cfg: &Config,
    trunks: &[ResolvedTrunk<'_>],
) -> Option<crate::call::outbound::Outbound> {
    use crate::call::outbound::{Outbound, OutboundTrunk};
    if cfg.trunks.is_empty() {
        return None;
    }
    let trunks = trunks
        .iter()
        .map(|t| {
            // Our media address as the trunk must see it.
            let media_ip = cfg.media.public_ip.unwrap_or_else(|| {
                if cfg.media.rtp_bind.is_unspecified() {
                    endpoint::route_source(t.peer.addr.ip()).unwrap_or(cfg.media.rtp_bind)
                } else {
                    cfg.media.rtp_bind
                }
            });
            OutboundTrunk::new(t.cfg, t.peer, t.host.clone(), media_ip)
        })
        .collect();
    Some(Outbound::new(trunks))
}

/// Everything a call needs: media, prompts, recordings, the runner and the SIP handle.
#[allow(clippy::too_many_arguments)]
fn start_calls(
    cfg: &Config,
    runner: &crate::runner::Runner,
    router: Arc<Router>,
    ep: &Endpoint,
    messaging: &Messaging,
    recordings: &crate::call::recordings::Recordings,
    credentials: &Credentials,
    outbound: Option<crate::call::outbound::Outbound>,
) -> Arc<CallServices> {
    let tts = Arc::new(Tts::new(&cfg.data_dir, &cfg.tts.command, cfg.tts.speed_wpm));
    if !tts.engine_available() {
        tracing::warn!(command = %cfg.tts.command, "text-to-speech engine not found: only pre-rendered prompts can be spoken (install espeak-ng)");
    }
    let media = start_media(cfg);
    let registry = Arc::new(Registry::default());
    let legs = outbound.map(|outbound| {
        Arc::new(crate::call::leg::Legs {
            outbound,
            sip: ep.handle.clone(),
            media: media.clone(),
            registry: registry.clone(),
            public_ip: cfg.media.public_ip,
            user_srtp: cfg.sip.srtp,
        })
    });
    Arc::new(CallServices {
        messages: Some(messaging.inbound.clone()),
        outbound_messages: Some(messaging.providers.clone()),
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
        registry,
        legs,
        public_ip: cfg.media.public_ip,
        max_calls: cfg.sip.max_calls,
        draining: Default::default(),
        speech: crate::speech::from_config(&cfg.speech).map(std::sync::Arc::from),
        account_sid: credentials.account_sid.clone(),
        auth_token: credentials.auth_token().to_string(),
    })
}

/// The REST API with the messaging webhook, recordings and (unless on a bind of their own)
/// the metrics.
fn build_api(
    cfg: &Config,
    credentials: Credentials,
    public_url: &str,
    runner: crate::runner::Runner,
    messaging: Messaging,
    recordings: crate::call::recordings::Recordings,
    calls: Arc<CallServices>,
) -> Arc<Api> {
    let webhook = Arc::new(Webhook::new(
        messaging.conversations,
        &credentials.account_sid,
        credentials.auth_token(),
        public_url,
        cfg.messaging.validate_signatures,
    ));
    if !cfg.messaging.validate_signatures {
        tracing::warn!("[messaging] validate_signatures = false: anyone can post inbound messages");
    }
    Arc::new(
        Api::new(credentials, public_url, runner, messaging.providers)
            .with_webhook(webhook)
            .with_recordings(recordings)
            .with_metrics(cfg.metrics.enabled && cfg.metrics.bind.is_none())
            .with_calls(&cfg.trunks, calls),
    )
}

/// `[metrics] bind`: `/metrics` on a listener of its own, without authentication.
async fn start_metrics_listener(cfg: &Config) -> anyhow::Result<Option<SocketAddr>> {
    let (true, Some(bind)) = (cfg.metrics.enabled, cfg.metrics.bind) else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding [metrics] on {bind}"))?;
    let addr = l.local_addr()?;
    tracing::info!(%addr, "metrics listener (no authentication)");
    tokio::spawn(async move {
        let app: axum::Router = crate::api::metrics_routes();
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(Some(addr))
}

fn http_limits(cfg: &Config) -> crate::api::listener::HttpLimits {
    crate::api::listener::HttpLimits {
        header_timeout: std::time::Duration::from_secs(cfg.http.header_timeout_secs.max(1)),
        request_timeout: std::time::Duration::from_secs(cfg.http.request_timeout_secs.max(1)),
        max_connections_per_source: cfg.http.max_connections_per_source.max(1),
    }
}

/// Who may send us SIP MESSAGE: `[sip] message_from`, and the hosts of the SIP messaging
/// providers' trunks (the SMS gateway we send to is the one that delivers to us).
async fn sms_trunk_sources(cfg: &Config) -> anyhow::Result<Acl> {
    let mut entries = cfg.sip.message_from.clone();
    let trunks = cfg
        .messaging
        .providers
        .iter()
        .filter(|p| p.kind == crate::config::ProviderKind::Sip)
        .filter_map(|p| p.trunk.as_deref());
    for trunk in trunks {
        let Some(hostport) = crate::sip::endpoint::hostport_of(trunk) else {
            continue;
        };
        let resolved = tokio::net::lookup_host(hostport.as_str()).await;
        match resolved {
            Ok(addrs) => entries.extend(addrs.map(|a| a.ip().to_string())),
            Err(e) => {
                tracing::warn!(trunk, error = %e, "cannot resolve the SMS trunk: its MESSAGE requests will be refused")
            }
        }
    }
    Ok(Acl::parse(&entries)?)
}

/// The data directory holds the database, recordings and API credentials: only the gateway's
/// own user may read it, and everything created in it is private (umask 077).
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
        unsafe {
            libc::umask(0o077);
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making data directory {} private", dir.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    Ok(())
}

/// This node's id, kept in the data directory so a restarted process knows which executions
/// were its own (several nodes may share one PostgreSQL database).
fn node_id(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = format!("node-{:016x}", rand::random::<u64>());
    let tmp = dir.join(".node-id.tmp");
    std::fs::write(&tmp, &id).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Why executions found running at start were ended: the process that ran them died.
pub(crate) const ENDED_BY_RESTART: &str =
    "the gateway stopped while this execution ran (the process died or was killed)";

/// After a crash (kill -9, power loss): recordings cut off mid-call are saved or removed, and
/// executions that were running in this node's previous process are ended with a reason.
/// Waiting conversations are untouched: their reply or timeout resumes them.
async fn recover_after_crash(
    store: &Store,
    cfg: &Config,
    account_sid: &str,
    events: Option<&Events>,
) -> anyhow::Result<()> {
    let recordings = crate::call::recordings::Recordings {
        dir: cfg.data_dir.join("recordings"),
        public_url: String::new(),
        account_sid: account_sid.to_string(),
    };
    let found = recordings.recover_leftovers();
    for (call_sid, saved) in &found.saved {
        tracing::warn!(call_sid = %call_sid, recording = %saved.sid, seconds = saved.duration_secs, "recording interrupted by a restart saved");
    }
    if found.removed > 0 {
        tracing::info!(
            files = found.removed,
            "temporary recording files of a previous run removed"
        );
    }
    let now = crate::store::now_rfc3339();
    for e in store.end_orphans(&now, ENDED_BY_RESTART).await? {
        tracing::warn!(execution = %e.sid, flow = %e.flow_sid, contact = %e.contact, reason = ENDED_BY_RESTART, "execution ended at start");
        if let Some(ev) = events {
            let ended = crate::store::ExecutionRecord {
                status: "ended".into(),
                date_updated: now.clone(),
                ..e
            };
            ev.execution_ended(&ended, "ENDED_BY_RESTART");
        }
    }
    Ok(())
}
