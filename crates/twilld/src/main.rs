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

/// Why twilld has its own `pow`: it was the one function of libm the program called (tokio's
/// scheduler raises a decay factor to a power after every batch of tasks), and linking libm
/// for it kept 0.5 MB of libm resident in every daemon (its loader work, the ifunc choice
/// and the code around `pow`, by fault-around). Defined here, the linker resolves
/// `f64::powf` to it and no longer asks for libm. The `libm` crate is musl's pow
/// (ARM's optimized-routines algorithm, as glibc's; < 1 ULP), on rust-lang's side.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use super::pow;

    #[test]
    fn pow_is_a_whole_pow() {
        // Exact where the result is representable; tokio's use: a factor below 1 raised
        // to a count of polls.
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(10.0, -3.0), 0.001);
        assert_eq!(pow(9.0, 0.5), 3.0);
        assert_eq!(pow(0.5, 1e6), 0.0);
        // The references are glibc's.
        for (x, y, want) in [
            (0.8, 61.0, 1.225_996_432_692_715_2e-6),
            (1.000_1, 1e4, 2.718_145_926_824_925_5),
        ] {
            let got = pow(x, y);
            assert!(
                (got - want).abs() <= want * 1e-14,
                "pow({x}, {y}) = {got}, want {want}"
            );
        }
        // C99's special cases, which a pow built from exp(y * ln x) gets wrong.
        assert_eq!(pow(1.0, f64::NAN), 1.0);
        assert_eq!(pow(f64::NAN, 0.0), 1.0);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(pow(-2.0, 3.0), -8.0);
        assert_eq!(pow(0.0, -1.0), f64::INFINITY);
        assert_eq!(pow(-0.0, -1.0), f64::NEG_INFINITY);
    }
}
