//! `depmap` binary: parses the command line and runs one of the commands.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use depmap::agent::{Agent, collect_once};
use depmap::cli::{Cli, Command, Format};
use depmap::config::{Config, Source};
use depmap::daemon::{Control, run_loop};
use depmap::metrics::Metrics;
use depmap::records::Table;
use depmap::{report, sink};

fn main() -> ExitCode {
    let cli = Cli::parse();
    depmap::logging::init();
    match cli.command {
        Command::Version => {
            let _ = writeln!(std::io::stdout(), "depmap {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config, quiet } => check_config(config.as_deref(), quiet),
        Command::Once {
            config,
            duration,
            format,
            tables,
            wide,
        } => match load(config.as_deref()) {
            Ok(c) => once(c, duration, format, &tables, wide),
            Err(e) => fail(2, &e),
        },
        Command::Map {
            config,
            dir,
            clickhouse,
            clickhouse_database,
            clickhouse_user,
            clickhouse_password_file,
            since,
            until,
            machines,
            format,
            out,
        } => {
            let configured = || Config::load_from(config.as_deref()).map(|(c, _)| c);
            let source = match (dir, clickhouse) {
                (Some(d), _) => depmap::map::RecordSource::Dir(d),
                (None, Some(url)) => {
                    let c = match configured() {
                        Ok(c) => c.sink.clickhouse,
                        Err(e) => return fail(2, &e.to_string()),
                    };
                    let database = clickhouse_database.unwrap_or(c.database);
                    if database.is_empty()
                        || !database
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return fail(
                            2,
                            &format!(
                                "--clickhouse-database {database:?}: letters, digits and _ only"
                            ),
                        );
                    }
                    let password_file = clickhouse_password_file.unwrap_or(c.password_file);
                    let password = if password_file.as_os_str().is_empty() {
                        None
                    } else {
                        match std::fs::read_to_string(&password_file) {
                            Ok(text) => Some(text.lines().next().unwrap_or("").to_string()),
                            Err(e) => {
                                return fail(
                                    2,
                                    &format!(
                                        "--clickhouse-password-file {}: {e}",
                                        password_file.display()
                                    ),
                                );
                            }
                        }
                    };
                    depmap::map::RecordSource::Clickhouse(depmap::map::input::ClickhouseSource {
                        url,
                        database,
                        user: clickhouse_user.unwrap_or(c.user),
                        password,
                        ca_file: c.ca_file,
                    })
                }
                (None, None) => match configured() {
                    Ok(c) => depmap::map::RecordSource::Dir(c.sink.file.dir(&c.agent.state_dir)),
                    Err(e) => return fail(2, &e.to_string()),
                },
            };
            let now = std::time::SystemTime::now();
            let request = depmap::map::MapRequest {
                source,
                since: since.resolve(now),
                until: until.map_or(now, |u| u.resolve(now)),
                machines,
                format: format.into(),
            };
            map(&request, out.as_deref())
        }
        Command::Run { config: path } => match load(path.as_deref()) {
            Ok(c) => run(c, path),
            Err(e) => fail(2, &e),
        },
    }
}

/// Loads and validates the configuration, including that the sink can write its directory.
fn load(path: Option<&std::path::Path>) -> Result<Config, String> {
    load_from(path).map(|(config, _)| config)
}

/// As [`load`], with where the configuration came from.
fn load_from(path: Option<&std::path::Path>) -> Result<(Config, Source), String> {
    let (config, source) = Config::load_from(path).map_err(|e| e.to_string())?;
    sink::check_writable(&config).map_err(|e| e.to_string())?;
    Ok((config, source))
}

/// `depmap check-config`: where the configuration came from, then the values in use (empty
/// defaults resolved), as TOML that loads back; `--quiet` prints only errors.
fn check_config(path: Option<&std::path::Path>, quiet: bool) -> ExitCode {
    let (config, source) = match load_from(path) {
        Ok(loaded) => loaded,
        Err(e) => return fail(2, &e),
    };
    if quiet {
        return ExitCode::SUCCESS;
    }
    let resolved = depmap::agent::resolved(&config);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# configuration: {source}");
    let _ = writeln!(
        out,
        "# the values in use; empty defaults are shown resolved (agent.computer, agent.agent_id, \
         the sink's directory)"
    );
    if resolved.agent.agent_id.is_empty() {
        let _ = writeln!(
            out,
            "# agent.agent_id: no /etc/machine-id; a random id is made and kept in {} at the first run",
            config.agent.state_dir.join("agent-id").display()
        );
    }
    let _ = write!(out, "{}", resolved.to_toml());
    if let Some((key, dir)) = config.sink_dir()
        && !dir.starts_with(sink::UNIT_WRITABLE_DIR)
    {
        let _ = out.flush();
        eprintln!(
            "depmap: note: {key} {} is outside {}: under systemd/depmap.service it is read-only \
             unless a drop-in adds `ReadWritePaths={}` (systemctl edit depmap)",
            dir.display(),
            sink::UNIT_WRITABLE_DIR,
            dir.display()
        );
    }
    ExitCode::SUCCESS
}

/// The single-threaded runtime that waits for signals while the work runs on a blocking
/// thread.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, &format!("cannot start the runtime: {e}")))
}

/// `depmap map`: the map to `out` (or stdout), a summary line on stderr.
fn map(request: &depmap::map::MapRequest, out: Option<&std::path::Path>) -> ExitCode {
    if request.since >= request.until {
        return fail(2, "--since must be before --until");
    }
    let (text, summary) = match depmap::map::make(request) {
        Ok(made) => made,
        Err(e) => return fail(1, &e.to_string()),
    };
    let written = match out {
        Some(path) => std::fs::write(path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write the map: {e}")),
    };
    if let Err(e) = written {
        return fail(1, &e);
    }
    let skipped = summary.skipped_text();
    eprintln!(
        "depmap map: {} machines, {} nodes, {} edges from {} records ({} outside the range); skipped: {}",
        summary.machines,
        summary.nodes,
        summary.edges,
        summary.records,
        summary.out_of_range,
        if skipped.is_empty() {
            "nothing"
        } else {
            &skipped
        }
    );
    ExitCode::SUCCESS
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("depmap: {msg}");
    ExitCode::from(code)
}

/// `depmap once`: the capability report, then one window of `duration`. SIGINT (Ctrl-C) or
/// SIGTERM end the window early; its records so far are printed, as `run` flushes at stop.
fn once(
    config: Config,
    duration: Duration,
    format: Format,
    tables: &[String],
    wide: bool,
) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    // The width people's tables and report must fit (none: --wide, or not for people).
    let width = (format == Format::Table && !wide)
        .then(report::terminal_width)
        .flatten();
    let collected = runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // Handlers before anything that can wait: a Ctrl-C during start-up ends the window.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let mut window = tokio::task::spawn_blocking(move || {
            let mut agent = Agent::start(config).map_err(|e| e.to_string())?;
            // The report says whether process events arrive: worth a bounded wait here.
            agent.settle_proc_events(Duration::from_millis(1500));
            let mut caps = report::capabilities(&agent.capabilities());
            if let Some(width) = width {
                caps = report::fit_lines(&caps, width);
            }
            // Writes ignore a closed pipe (`depmap once | head`): nothing is left to tell anyone.
            match format {
                Format::Table => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{caps}");
                    let _ = stdout.flush();
                }
                Format::Ndjson => eprint!("{caps}"),
            }
            let records = collect_once(&mut agent, duration, &stopped);
            tracing::debug!(summary = %agent.loss_summary(), "once done");
            Ok::<_, String>(records)
        });
        let interrupted = tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
            done = &mut window => return Ok(done),
        };
        if interrupted {
            eprintln!("depmap: interrupted; the records of the window so far:");
        }
        let _ = stop.send(());
        Ok::<_, std::io::Error>(window.await)
    });
    let records = match collected {
        Ok(Ok(Ok(records))) => records,
        Ok(Ok(Err(e))) => return fail(1, &e),
        Ok(Err(e)) => return fail(1, &format!("collecting stopped: {e}")),
        Err(e) => return fail(1, &format!("cannot handle signals: {e}")),
    };
    let mut stdout = std::io::stdout().lock();
    let wanted = |t: Table| tables.is_empty() || tables.iter().any(|w| w == t.name());
    match format {
        Format::Ndjson => {
            for r in records.iter().filter(|r| wanted(r.table())) {
                if writeln!(stdout, "{}", r.to_json()).is_err() {
                    break;
                }
            }
        }
        Format::Table => {
            for t in Table::ALL.into_iter().filter(|t| wanted(*t)) {
                if writeln!(stdout, "{}", report::table(t, &records, width)).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stdout.flush();
    ExitCode::SUCCESS
}

/// `depmap run`: the daemon. Signals stop the poll loop, which flushes the current window.
fn run(config: Config, path: Option<std::path::PathBuf>) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // Handlers before anything that can wait (opening the kernel interfaces, the first
        // poll): a SIGTERM or SIGHUP that arrives during start-up is acted on, never fatal.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (control, controls) = std::sync::mpsc::channel::<Control>();
        let metrics = Metrics::new();
        if !config.metrics.listen.is_empty() {
            let listener = match tokio::net::TcpListener::bind(&config.metrics.listen).await {
                Ok(l) => l,
                Err(e) => {
                    let why = format!(
                        "metrics.listen: cannot listen on {}: {e}",
                        config.metrics.listen
                    );
                    return Ok(Ok(Err(why)));
                }
            };
            tracing::info!(listen = %config.metrics.listen, "serving /metrics");
            tokio::spawn(depmap::metrics::serve(listener, metrics.clone()));
        }
        let mut poller = tokio::task::spawn_blocking(move || {
            let sink = sink::build(&config, metrics.clone())
                .map_err(|e| format!("cannot open the {:?} sink: {e}", config.sink.kind))?;
            let mut agent = Agent::start(config).map_err(|e| e.to_string())?;
            run_loop(&mut agent, sink, &controls, metrics);
            Ok::<(), String>(())
        });
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    // A configuration that does not load is refused; the running one stays.
                    match load(path.as_deref()) {
                        Ok(c) => {
                            tracing::info!("SIGHUP: reloading the configuration");
                            let _ = control.send(Control::Reload(Box::new(c)));
                        }
                        Err(e) => {
                            tracing::error!(
                                error = %e,
                                "SIGHUP: the new configuration is invalid; keeping the running one"
                            );
                            depmap::service::status(&format!(
                                "reload refused at {}: {e}; running the previous configuration",
                                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                            ));
                        }
                    }
                }
                done = &mut poller => return Ok(done),
            }
        }
        tracing::info!("signal received; flushing the current window");
        let _ = control.send(Control::Stop);
        Ok::<_, std::io::Error>(poller.await)
    });
    match result {
        Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
        Ok(Ok(Err(e))) => fail(1, &e),
        Ok(Err(e)) => fail(1, &format!("stopped: {e}")),
        Err(e) => fail(1, &format!("cannot handle signals: {e}")),
    }
}
