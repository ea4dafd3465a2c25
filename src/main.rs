use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use switchboard::config::Config;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted telephony and IVR gateway that runs Twilio Studio flows"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (SIP, media, HTTP).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// SIP UDP+TCP listen address (default 0.0.0.0:5060).
        #[arg(long)]
        sip_bind: Option<std::net::SocketAddr>,
        /// HTTP listen address (default 127.0.0.1:8080).
        #[arg(long)]
        http_bind: Option<std::net::SocketAddr>,
        /// Data directory (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Flow that answers calls and messages to any number without a route.
        #[arg(long)]
        flow: Option<PathBuf>,
    },
    /// Run a messaging flow in the terminal: each stdin line is an inbound message.
    Chat {
        /// Studio flow JSON.
        flow: PathBuf,
        /// The contact's address (the message sender).
        #[arg(long, default_value = "+15550100000")]
        from: String,
        /// Our address (the number messaged).
        #[arg(long, default_value = "+15550199999")]
        to: String,
        /// `flow.data` values for a new execution.
        #[arg(long = "data", value_name = "KEY=VALUE", value_parser = parse_kv)]
        data: Vec<(String, String)>,
        /// Keep the conversation in this directory (default: a temporary one).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Call a SIP URI as a real user agent (SIP/UDP, RTP, RFC 4733 DTMF): one test call, or
    /// a load run with --calls/--concurrency/--rate. Prints a summary; the last stdout line is
    /// JSON ({"summary": ...}). Exits 0 when every call was answered and ended cleanly.
    Call(switchboard::dialer::CallArgs),
    /// Studio flow tools.
    Flow {
        #[command(subcommand)]
        command: FlowCmd,
    },
}

#[derive(Subcommand)]
enum FlowCmd {
    /// Validate Studio flow JSON files; exits non-zero when any is invalid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Call(args) => call(&args),
        Cmd::Flow {
            command: FlowCmd::Validate { files },
        } => validate(&files),
        Cmd::Chat {
            flow,
            from,
            to,
            data,
            data_dir,
        } => {
            let opts = switchboard::chat::ChatOptions {
                flow,
                from,
                to,
                data,
                data_dir,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchboard: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(switchboard::chat::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchboard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Serve {
            config,
            sip_bind,
            http_bind,
            data_dir,
            flow,
        } => {
            let mut cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(b) = sip_bind {
                cfg.sip.bind = b;
            }
            if let Some(b) = http_bind {
                cfg.http.bind = b;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if flow.is_some() {
                cfg.flow = flow;
            }
            if let Err(e) = cfg.check_trunks() {
                eprintln!("switchboard: configuration: {e}");
                return ExitCode::from(2);
            }
            serve(cfg)
        }
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn serve(cfg: Config) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match switchboard::server::start(cfg).await {
            Ok(r) => {
                // One machine-readable line that scripts and tests wait for.
                let metrics = r.metrics.map(|m| format!(" metrics={m}")).unwrap_or_default();
                let tls = r.sip_tls.map(|a| format!(" sip_tls={a}")).unwrap_or_default();
                println!("switchboard ready sip_udp={} sip_tcp={}{tls} http={}{metrics}", r.sip_udp, r.sip_tcp, r.http);
                tracing::info!(sip_udp = %r.sip_udp, sip_tcp = %r.sip_tcp, http = %r.http, "listening");
                stop_signal().await;
                r.shutdown.run().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchboard: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM (service managers, `kill`) or SIGINT (ctrl-c).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn call(args: &switchboard::dialer::CallArgs) -> ExitCode {
    match run_call(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("switchboard call: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Ok(true) when every call completed; the summary goes to stdout, its JSON line last.
fn run_call(args: &switchboard::dialer::CallArgs) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    let opts = args.validate()?;
    let single = opts.calls == 1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start runtime")?;
    let summary = rt.block_on(switchboard::dialer::run(opts))?;
    print!("{}", summary.human());
    println!("{}", summary.json_line());
    if summary.success() {
        return Ok(true);
    }
    if single {
        let why = summary
            .first_failure
            .as_deref()
            .unwrap_or("did not complete");
        eprintln!("switchboard call: call failed: {why}");
    } else {
        eprintln!(
            "switchboard call: {} of {} calls failed",
            summary.attempted - summary.completed,
            summary.attempted
        );
    }
    Ok(false)
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for f in files {
        let result = std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                switchboard::flow::Flow::from_json(&json)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => println!("{}: valid", f.display()),
            Err(e) => {
                bad += 1;
                println!("{}: invalid", f.display());
                for line in e.lines() {
                    println!("  {line}");
                }
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
