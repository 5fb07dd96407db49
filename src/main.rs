//! `depmap` binary: parses the command line and runs one of the commands.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use depmap::agent::{Agent, collect_once};
use depmap::cli::{Cli, Command, Format};
use depmap::config::Config;
use depmap::daemon::{Control, run_loop};
use depmap::metrics::Metrics;
use depmap::records::{Record, TABLES};
use depmap::{report, sink};

fn main() -> ExitCode {
    let cli = Cli::parse();
    depmap::logging::init();
    match cli.command {
        Command::Version => {
            let _ = writeln!(std::io::stdout(), "depmap {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                let _ = write!(std::io::stdout(), "{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e.to_string()),
        },
        Command::Once {
            config,
            duration,
            format,
            tables,
        } => match Config::load(config.as_deref()) {
            Ok(c) => once(c, duration, format, &tables),
            Err(e) => fail(2, &e.to_string()),
        },
        Command::Run { config: path } => match Config::load(path.as_deref()) {
            Ok(c) => run(c, path),
            Err(e) => fail(2, &e.to_string()),
        },
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("depmap: {msg}");
    ExitCode::from(code)
}

/// `depmap once`: the capability report, then one window of `duration`.
fn once(config: Config, duration: Duration, format: Format, tables: &[String]) -> ExitCode {
    let mut agent = match Agent::start(config) {
        Ok(a) => a,
        Err(e) => return fail(1, &e),
    };
    let caps = report::capabilities(&agent.capabilities);
    // Writes ignore a closed pipe (`depmap once | head`): nothing is left to tell anyone.
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Table => {
            let _ = writeln!(stdout, "{caps}");
        }
        Format::Ndjson => eprint!("{caps}"),
    }
    let _ = stdout.flush();
    let records = collect_once(&mut agent, duration);
    let wanted = |r: &Record| tables.is_empty() || tables.iter().any(|t| t == r.table());
    match format {
        Format::Ndjson => {
            for r in records.iter().filter(|r| wanted(r)) {
                if writeln!(stdout, "{}", r.to_json()).is_err() {
                    break;
                }
            }
        }
        Format::Table => {
            for t in TABLES
                .iter()
                .filter(|t| tables.is_empty() || tables.iter().any(|w| w == *t))
            {
                if writeln!(stdout, "{}", report::table(t, &records)).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stdout.flush();
    tracing::debug!(summary = %agent.loss_summary(), "once done");
    ExitCode::SUCCESS
}

/// `depmap run`: the daemon. Signals stop the poll loop, which flushes the current window.
fn run(config: Config, path: Option<std::path::PathBuf>) -> ExitCode {
    let metrics = Metrics::new();
    if !config.metrics.listen.is_empty() {
        if let Err(e) = depmap::metrics::serve(&config.metrics.listen, metrics.clone()) {
            return fail(1, &format!("metrics.listen: {e}"));
        }
        tracing::info!(listen = %config.metrics.listen, "serving /metrics");
    }
    let sink = match sink::build(&config, metrics.clone()) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                1,
                &format!("cannot open the {:?} sink: {e}", config.sink.kind),
            );
        }
    };
    let mut agent = match Agent::start(config) {
        Ok(a) => a,
        Err(e) => return fail(1, &e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // Handlers first: a signal that arrives while the first poll runs must flush, not kill.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (control, controls) = std::sync::mpsc::channel::<Control>();
        let mut poller =
            tokio::task::spawn_blocking(move || run_loop(&mut agent, sink, &controls, metrics));
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    // A configuration that does not load is refused; the running one stays.
                    match Config::load(path.as_deref()) {
                        Ok(c) => {
                            tracing::info!("SIGHUP: reloading the configuration");
                            let _ = control.send(Control::Reload(Box::new(c)));
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "SIGHUP: the new configuration is invalid; keeping the running one"
                        ),
                    }
                }
                done = &mut poller => return done.map_err(std::io::Error::other),
            }
        }
        tracing::info!("signal received; flushing the current window");
        let _ = control.send(Control::Stop);
        poller.await.map_err(std::io::Error::other)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("stopped: {e}")),
    }
}
