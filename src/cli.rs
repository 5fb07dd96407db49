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
    /// Print the version.
    Version,
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
