//! `depmap` binary: parses the command line and runs one of the commands.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use depmap::agent::{Agent, collect_once, run_loop};
use depmap::cli::{Cli, Command, Format};
use depmap::config::Config;
use depmap::metrics::Metrics;
use depmap::records::{Record, TABLES};
use depmap::{report, sink};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPMAP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        // Colours only for a person at a terminal: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
        Command::Run { config } => match Config::load(config.as_deref()) {
            Ok(c) => run(c),
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
fn run(config: Config) -> ExitCode {
    let metrics = Metrics::new();
    if !config.metrics.listen.is_empty() {
        if let Err(e) = depmap::metrics::serve(&config.metrics.listen, metrics.clone()) {
            return fail(1, &format!("metrics.listen: {e}"));
        }
        tracing::info!(listen = %config.metrics.listen, "serving /metrics");
    }
    let mut sink = match sink::build(&config, metrics.clone()) {
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
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let mut poller = tokio::task::spawn_blocking(move || {
            run_loop(&mut agent, sink.as_mut(), &stop_rx, &metrics)
        });
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            done = &mut poller => return done.map_err(std::io::Error::other),
        }
        tracing::info!("signal received; flushing the current window");
        let _ = stop_tx.send(());
        poller.await.map_err(std::io::Error::other)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("stopped: {e}")),
    }
}
