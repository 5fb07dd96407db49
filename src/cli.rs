//! The command line of SPEC §2. Scripts depend on it: keep it stable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "depmap",
    version,
    about = "Maps this host's network dependencies into the VM Insights Map tables \
             (VMComputer, VMProcess, VMBoundPort, VMConnection)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: collect windows forever and deliver them to the configured sink.
    /// SIGTERM or SIGINT flushes the current window and exits 0.
    Run {
        /// Configuration file (default /etc/depmap/depmap.toml; defaults if that is missing).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Diagnostics: print what depmap can see on this host, then collect one window of
    /// --duration and print its records.
    Once {
        /// Configuration file (default /etc/depmap/depmap.toml; defaults if that is missing).
        #[arg(long)]
        config: Option<PathBuf>,
        /// How long to collect, e.g. 500ms, 5s, 1m.
        #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
        duration: Duration,
        /// `table` for people, `ndjson` for one JSON record a line with `Type`.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only these tables (repeatable): VMComputer, VMProcess, VMBoundPort, VMConnection.
        #[arg(long = "table", value_parser = parse_table)]
        tables: Vec<String>,
        /// Tables with every column and whole values, whatever the terminal's width (by
        /// default they fit it: long values are cut and the last columns left out, named).
        #[arg(long)]
        wide: bool,
    },
    /// Validate the configuration and print the effective one (the values in use, defaults
    /// resolved) and where it came from; exit 0, or 2 with one line naming the key.
    CheckConfig {
        /// Configuration file (default /etc/depmap/depmap.toml; defaults if that is missing).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print nothing when the configuration is good (for `ExecReload=`).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Draw the dependency map of the records the file sink wrote: machines holding their
    /// processes, edges labelled with links, bytes and response time (README "The map").
    Map {
        /// Configuration file whose `sink.file.dir` is read (default /etc/depmap/depmap.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Record directory (default: the configured file sink's).
        #[arg(long, conflicts_with = "clickhouse")]
        dir: Option<PathBuf>,
        /// Read the records from ClickHouse instead (its HTTP interface, e.g.
        /// http://127.0.0.1:8123); database, user and password file default to the
        /// configuration's `sink.clickhouse`.
        #[arg(long)]
        clickhouse: Option<String>,
        #[arg(long, requires = "clickhouse")]
        clickhouse_database: Option<String>,
        #[arg(long, requires = "clickhouse")]
        clickhouse_user: Option<String>,
        /// File whose first line is the password.
        #[arg(long, requires = "clickhouse")]
        clickhouse_password_file: Option<PathBuf>,
        /// Start of the range: a duration before now (`1h`, `30m`) or an RFC 3339 time.
        #[arg(long, default_value = "1h", value_parser = parse_when)]
        since: When,
        /// End of the range (exclusive): a duration before now or an RFC 3339 time; default now.
        #[arg(long, value_parser = parse_when)]
        until: Option<When>,
        /// Only these machines' dependencies (repeatable): a name (Computer) or `m-` id.
        #[arg(long = "machine")]
        machines: Vec<String>,
        /// `html` (one self-contained page), `dot` (Graphviz), `json` (Grafana Node Graph
        /// frames), `csv` (dependency export).
        #[arg(long, value_enum, default_value_t = MapFormatArg::Html)]
        format: MapFormatArg,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MapFormatArg {
    Html,
    Dot,
    Json,
    Csv,
}

impl From<MapFormatArg> for crate::map::MapFormat {
    fn from(f: MapFormatArg) -> Self {
        match f {
            MapFormatArg::Html => crate::map::MapFormat::Html,
            MapFormatArg::Dot => crate::map::MapFormat::Dot,
            MapFormatArg::Json => crate::map::MapFormat::Json,
            MapFormatArg::Csv => crate::map::MapFormat::Csv,
        }
    }
}

/// A point in time on the command line: so long before now, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Ago(Duration),
    At(std::time::SystemTime),
}

impl When {
    pub fn resolve(self, now: std::time::SystemTime) -> std::time::SystemTime {
        match self {
            When::Ago(d) => now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
            When::At(t) => t,
        }
    }
}

fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(d) = humantime::parse_duration(s.trim()) {
        return Ok(When::Ago(d));
    }
    humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z'))
        .map(When::At)
        .map_err(|_| {
            format!(
                "`{s}` is neither a duration (1h, 30m) nor an RFC 3339 time (2026-12-02T15:00:00Z)"
            )
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Ndjson,
}

fn parse_table(s: &str) -> Result<String, String> {
    crate::records::TABLES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(s))
        .map(|t| t.to_string())
        .ok_or_else(|| {
            format!(
                "unknown table `{s}`; one of {}",
                crate::records::TABLES.join(", ")
            )
        })
}
