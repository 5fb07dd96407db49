//! `depmap map`: the picture of the dependencies that records describe (README "The map").
//!
//! input (records from the file sink's directory, streamed) → model (summed per logical
//! connection over the range) → graph (machines, processes, remote endpoints, client groups,
//! edges; folding beyond 50 processes) → layout and render (HTML with inline SVG, dot,
//! Grafana Node Graph JSON, dependency CSV). It reads what the sinks wrote and nothing of the
//! agent's state, so it runs anywhere the records are.

pub mod graph;
pub mod input;
pub mod layout;
pub mod model;
pub mod render;

use std::path::PathBuf;
use std::time::SystemTime;

use input::{ReadError, Skipped};
use model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFormat {
    Html,
    Dot,
    Json,
    Csv,
}

/// Where the records are.
pub enum RecordSource {
    /// A file sink's directory.
    Dir(PathBuf),
    Clickhouse(input::ClickhouseSource),
}

impl RecordSource {
    fn describe(&self) -> String {
        match self {
            RecordSource::Dir(d) => d.display().to_string(),
            RecordSource::Clickhouse(c) => format!("ClickHouse {} database {}", c.url, c.database),
        }
    }
}

pub struct MapRequest {
    pub source: RecordSource,
    pub since: SystemTime,
    pub until: SystemTime,
    /// Machine ids (`m-…`) or names; empty: every machine in the records.
    pub machines: Vec<String>,
    pub format: MapFormat,
}

/// What a map was made of, for the summary line.
#[derive(Debug, Default)]
pub struct MapSummary {
    pub records: u64,
    pub out_of_range: u64,
    pub skipped: Skipped,
    pub bad_times: u64,
    pub machines: usize,
    pub nodes: usize,
    pub edges: usize,
}

impl MapSummary {
    /// "3 lines not records (first: …), 1 foreign file": what was skipped, or empty.
    pub fn skipped_text(&self) -> String {
        let s = &self.skipped;
        let mut parts = Vec::new();
        if s.lines > 0 {
            parts.push(format!(
                "{} lines not records of their table (first: {})",
                s.lines,
                s.first_reason.as_deref().unwrap_or("?")
            ));
        }
        if self.bad_times > 0 {
            parts.push(format!(
                "{} records with an unreadable TimeGenerated",
                self.bad_times
            ));
        }
        if s.foreign_files > 0 {
            parts.push(format!(
                "{} files that are not record files",
                s.foreign_files
            ));
        }
        if s.unreadable_files > 0 {
            parts.push(format!(
                "{} files that could not be read",
                s.unreadable_files
            ));
        }
        parts.join(", ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("no records between {since} and {until} in {dir}{skipped}")]
    Empty {
        since: String,
        until: String,
        dir: String,
        skipped: String,
    },
    #[error("no machine named {0:?} in the records of the range (machines there: {1})")]
    NoSuchMachine(String, String),
    #[error("cannot write the CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// Reads the files on as many threads as there are cores (at most 4), each summing into a
/// model of its own, merged at the end: parsing is the whole cost (measured: 3.1 s for a
/// day of a 900-connection host on one core of this machine).
fn read_in_parallel(
    files: Vec<input::RecordFile>,
    req: &MapRequest,
    skipped: &mut Skipped,
) -> Model {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(files.len().max(1));
    // Largest first, each to the least loaded worker.
    let mut files = files;
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let mut shares: Vec<(u64, Vec<input::RecordFile>)> =
        (0..workers).map(|_| (0, Vec::new())).collect();
    for f in files {
        if let Some(share) = shares.iter_mut().min_by_key(|(load, _)| *load) {
            share.0 += f.size;
            share.1.push(f);
        }
    }
    let (since, until) = (req.since, req.until);
    let results: Vec<(Model, Skipped)> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|(_, files)| {
                scope.spawn(move || {
                    let mut model = Model::default();
                    let mut skipped = Skipped::default();
                    for f in &files {
                        input::read_file(f, &mut skipped, |r| model.add(r, since, until));
                    }
                    (model, skipped)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut model = Model::default();
    for (m, s) in results {
        model.merge(m);
        skipped.merge(s);
    }
    model
}

/// Reads, sums and draws; the output text and what it was made of.
pub fn make(req: &MapRequest) -> Result<(String, MapSummary), MapError> {
    let mut summary = MapSummary::default();
    let model = match &req.source {
        RecordSource::Dir(dir) => {
            let files = input::record_files(dir, req.until, &mut summary.skipped)?;
            read_in_parallel(files, req, &mut summary.skipped)
        }
        RecordSource::Clickhouse(source) => {
            let mut model = Model::default();
            input::read_clickhouse(source, req.since, req.until, &mut summary.skipped, |r| {
                model.add(r, req.since, req.until)
            })?;
            model
        }
    };
    summary.records = model.records;
    summary.out_of_range = model.out_of_range;
    summary.bad_times = model.bad_times;
    let since = humantime::format_rfc3339_seconds(req.since).to_string();
    let until = humantime::format_rfc3339_seconds(req.until).to_string();
    if model.connections.is_empty() && model.ports.is_empty() {
        let skipped = summary.skipped_text();
        return Err(MapError::Empty {
            since,
            until,
            dir: req.source.describe(),
            skipped: if skipped.is_empty() {
                String::new()
            } else {
                format!(" (skipped: {skipped})")
            },
        });
    }
    let chosen = graph::selected(&model, &req.machines);
    for wanted in &req.machines {
        let found = model
            .machines
            .iter()
            .any(|(id, m)| id == wanted || m.name.eq_ignore_ascii_case(wanted));
        if !found {
            let names: Vec<String> = model
                .machines
                .iter()
                .map(|(id, m)| format!("{} ({id})", m.name))
                .collect();
            return Err(MapError::NoSuchMachine(wanted.clone(), names.join(", ")));
        }
    }
    let g = graph::build(&model, &chosen);
    summary.machines = g.machines.len();
    summary.nodes = g.nodes.len();
    summary.edges = g.edges.len();
    let text = match req.format {
        MapFormat::Html => render::html(
            &g,
            &render::Caption {
                since,
                until,
                source: req.source.describe(),
                records: summary.records,
                skipped: summary.skipped_text(),
            },
        ),
        MapFormat::Dot => render::dot(&g),
        MapFormat::Json => render::json(&g),
        MapFormat::Csv => render::csv(&g)?,
    };
    Ok((text, summary))
}
