use clap::Parser;
use twilld::{cleanup, cli, daemon, doctor, exabgp, explain, install_cni, status};

fn init_logging(format: cli::LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    cli::drop_empty_env();
    let args = cli::normalize_args(std::env::args());
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => match cli::env_error(&e, &args) {
            Some(msg) => {
                eprintln!("twilld: error: {msg}");
                return std::process::ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    init_logging(cli.log_format, cli.klog.filter());
    for flag in cli.klog.ignored() {
        tracing::warn!("{flag} (a klog flag of flanneld's) is ignored: twilld logs to stderr; -v sets the level");
    }
    if let Some(cli::Command::InstallCni(args)) = &cli.command {
        return match install_cni::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("twilld install-cni: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // glibc gives every thread that allocates an arena of its own and keeps what was freed
    // there for reuse by that arena only. With twilld's few, mostly idle threads that
    // retained memory, not live data, was half the heap's resident size (heaptrack on a
    // Kubernetes node with 1 000 peers: 4.1 MB live at peak, 8.2 MB resident). One arena
    // is plenty at twilld's allocation rate.
    #[cfg(target_env = "gnu")]
    // SAFETY: called before any other thread exists; mallopt only sets a malloc option.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilld: error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(cli::Command::ExabgpFeed(args)) = &cli.command {
        return match rt.block_on(exabgp::run(&cli.node_options(), args)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("twilld exabgp-feed: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // cleanup and doctor exit 1 when something failed, 0 when all went well.
    let checked = match &cli.command {
        Some(cli::Command::Cleanup(args)) => Some((
            "cleanup",
            rt.block_on(cleanup::run(&cli.node_options(), args)),
        )),
        Some(cli::Command::Doctor(args)) => Some((
            "doctor",
            rt.block_on(doctor::run(&cli.node_options(), args)),
        )),
        Some(cli::Command::Policy(args)) => Some((
            "policy",
            rt.block_on(explain::run(&cli.kube_options(false), args)),
        )),
        Some(cli::Command::Status(args)) => Some((
            "status",
            rt.block_on(status::run(&cli.node_options(), args)),
        )),
        _ => None,
    };
    if let Some((name, result)) = checked {
        return match result {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::FAILURE,
            Err(e) => {
                eprintln!("twilld {name}: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match rt.block_on(daemon::run(cli.daemon_options())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("twilld: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
