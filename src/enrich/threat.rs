//! Malicious-IP indicators: the `MaliciousIp`, `IndicatorThreatType`, `Description`,
//! `TLPLevel`, `Confidence`, `Severity`, `FirstReportedDateTime`, `LastReportedDateTime` and
//! `IsActive` columns of VMConnection.
//!
//! Indicators come from the files in `enrich.indicator_files`: CSV with a header line (`.csv`)
//! or JSON lines (any other name), one indicator each — a single address or a CIDR range,
//! IPv4 or IPv6 — with the columns `indicator`, `threat_type`, `description`, `tlp_level`,
//! `confidence`, `severity`, `first_reported`, `last_reported`, `is_active` (all but
//! `indicator` optional). A malformed line is reported with its file and line number and
//! skipped; the rest still loads. Files are read again when their modification time changes.
//!
//! Matching is by longest prefix: one hash table per prefix length present, probed from the
//! longest length down — at most 33 probes for IPv4 and 129 for IPv6 whatever the number of
//! indicators (constant time per lookup).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Deserialize;

/// One indicator's columns, as the records carry them. Shared: feeds repeat the same few
/// threat types, levels and dates across millions of lines, so each distinct text and each
/// distinct set of columns is stored once per load, and a network costs its map slot and a
/// pointer (measured: 150,000 indicators of 100 distinct sets in 60 MB less than with a copy
/// each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Indicator {
    pub threat_type: Option<Arc<str>>,
    pub description: Option<Arc<str>>,
    pub tlp_level: Option<Arc<str>>,
    pub confidence: Option<Arc<str>>,
    pub severity: Option<i32>,
    pub first_reported: Option<Arc<str>>,
    pub last_reported: Option<Arc<str>>,
    pub is_active: Option<Arc<str>>,
}

/// A line as read (CSV row or JSON object), before its address is parsed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Line {
    indicator: String,
    threat_type: Option<String>,
    description: Option<String>,
    tlp_level: Option<String>,
    confidence: Option<String>,
    severity: Option<i32>,
    first_reported: Option<String>,
    last_reported: Option<String>,
    is_active: Option<String>,
}

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

/// The lines one load did not take: the first [`NAMED_REJECTIONS`] with their reasons, and
/// how many in all (a file of garbage must not cost a record per line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections {
    pub named: Vec<Rejected>,
    /// Lines skipped as malformed.
    pub skipped: usize,
    /// Indicators beyond `max_indicators`: not loaded.
    pub over_cap: usize,
}

pub const NAMED_REJECTIONS: usize = 10;

impl Rejections {
    fn push(&mut self, r: Rejected) {
        self.skipped += 1;
        if self.named.len() < NAMED_REJECTIONS {
            self.named.push(r);
        }
    }
}

/// The indicators of one prefix length and family, by network address.
type Table = HashMap<IpAddr, Arc<Indicator>>;

/// The loaded indicators, by prefix length, longest first.
#[derive(Debug, Default)]
pub struct Indicators {
    /// (prefix length, is IPv6) → network address → indicator.
    tables: Vec<((u8, bool), Table)>,
    len: usize,
    files: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Indicators {
    /// Loads `files`, at most `max` indicators (networks); returns them and the lines not
    /// taken. Each line goes straight into its table: nothing else holds a whole file.
    pub fn load(files: &[PathBuf], max: usize) -> (Indicators, Rejections) {
        let mut load = Load {
            by_len: HashMap::new(),
            len: 0,
            max,
            texts: HashSet::new(),
            sets: HashSet::new(),
            rejections: Rejections::default(),
        };
        let mut stamps = Vec::new();
        for file in files {
            stamps.push((file.clone(), mtime(file)));
            // Streamed as bytes: a line that is not UTF-8 is that line's problem only (read
            // whole as text, one bad byte dropped every indicator of the file: issue 12).
            match fs::File::open(file) {
                Ok(f) => load.file(file, std::io::BufReader::new(f)),
                Err(e) => load.rejections.push(Rejected {
                    file: file.clone(),
                    line: 0,
                    reason: format!("cannot read: {e}"),
                }),
            }
        }
        let mut tables: Vec<_> = load.by_len.into_iter().collect();
        tables.sort_by_key(|t| std::cmp::Reverse(t.0.0));
        (
            Indicators {
                tables,
                len: load.len,
                files: stamps,
            },
            load.rejections,
        )
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any file changed (or appeared, or went) since it was loaded.
    pub fn changed(&self) -> bool {
        self.files.iter().any(|(f, t)| mtime(f) != *t)
    }

    /// The most specific indicator covering `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Indicator> {
        let v6 = ip.is_ipv6();
        for ((prefix, is_v6), table) in &self.tables {
            if *is_v6 != v6 {
                continue;
            }
            let Ok(net) = IpNet::new(ip, *prefix) else {
                continue;
            };
            if let Some(ind) = table.get(&net.network()) {
                return Some(ind);
            }
        }
        None
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{t}` is not an IP address or CIDR range"))
}

/// One load in progress.
struct Load {
    by_len: HashMap<(u8, bool), Table>,
    len: usize,
    max: usize,
    /// Each distinct text once, and each distinct set of columns (see [`Indicator`]).
    texts: HashSet<Arc<str>>,
    sets: HashSet<Arc<Indicator>>,
    rejections: Rejections,
}

impl Load {
    fn text(&mut self, t: Option<String>) -> Option<Arc<str>> {
        let t = t?;
        if let Some(shared) = self.texts.get(t.as_str()) {
            return Some(shared.clone());
        }
        let shared: Arc<str> = Arc::from(t);
        self.texts.insert(shared.clone());
        Some(shared)
    }

    fn accept(&mut self, file: &Path, line: usize, l: Line) {
        let net = match parse_net(&l.indicator) {
            Ok(net) => net,
            Err(reason) => {
                self.rejections.push(Rejected {
                    file: file.to_path_buf(),
                    line,
                    reason,
                });
                return;
            }
        };
        let key = (net.prefix_len(), net.addr().is_ipv6());
        let known = self
            .by_len
            .get(&key)
            .is_some_and(|t| t.contains_key(&net.network()));
        if !known && self.len >= self.max {
            self.rejections.over_cap += 1;
            return;
        }
        let ind = Indicator {
            threat_type: self.text(l.threat_type),
            description: self.text(l.description),
            tlp_level: self.text(l.tlp_level),
            confidence: self.text(l.confidence),
            severity: l.severity,
            first_reported: self.text(l.first_reported),
            last_reported: self.text(l.last_reported),
            is_active: self.text(l.is_active),
        };
        let ind = match self.sets.get(&ind) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(ind);
                self.sets.insert(shared.clone());
                shared
            }
        };
        // A later line for the same network replaces an earlier one.
        if self
            .by_len
            .entry(key)
            .or_default()
            .insert(net.network(), ind)
            .is_none()
        {
            self.len += 1;
        }
    }

    fn reject(&mut self, file: &Path, line: usize, reason: String) {
        self.rejections.push(Rejected {
            file: file.to_path_buf(),
            line,
            reason,
        });
    }

    fn file(&mut self, file: &Path, text: impl std::io::BufRead) {
        if file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .flexible(true)
                .from_reader(text);
            for (i, row) in reader.deserialize::<Line>().enumerate() {
                // Line numbers count the header as line 1.
                let line = i + 2;
                match row {
                    Ok(l) => self.accept(file, line, l),
                    Err(e) => self.reject(file, line, e.to_string()),
                }
            }
            return;
        }
        for (i, raw) in text.split(b'\n').enumerate() {
            let raw = match raw {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.reject(file, i + 1, format!("cannot read: {e}"));
                    break;
                }
            };
            let Ok(raw) = std::str::from_utf8(&raw) else {
                self.reject(file, i + 1, "not UTF-8".into());
                continue;
            };
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            match serde_json::from_str::<Line>(raw) {
                Ok(l) => self.accept(file, i + 1, l),
                Err(e) => self.reject(file, i + 1, e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("depmap-threat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_line_that_is_not_utf8_is_skipped_alone() {
        let dir = std::env::temp_dir().join(format!("depmap-threat-bytes-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("x.csv");
        fs::write(
            &csv,
            b"indicator,threat_type\n10.0.0.1,C2\n10.0.0.2,Bad\xff\n10.0.0.3,Botnet\n",
        )
        .unwrap();
        let jsonl = dir.join("x.jsonl");
        fs::write(
            &jsonl,
            b"{\"indicator\": \"10.1.0.1\"}\n{\"indicator\": \"10.1.0.2\xff\"}\n{\"indicator\": \"10.1.0.3\"}\n",
        )
        .unwrap();
        let (ind, rejected) = Indicators::load(&[csv, jsonl], 100);
        assert_eq!(ind.len(), 4, "{rejected:?}");
        let lines: Vec<usize> = rejected.named.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 2], "{rejected:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn at_most_max_indicators_load_and_the_rest_are_counted() {
        let mut text = String::from("indicator,threat_type,tlp_level\n");
        for i in 0..1_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            text.push_str(&format!("{ip},Botnet,Amber\n"));
        }
        // A known network again replaces its line even at the cap; garbage is counted.
        text.push_str("10.0.0.1,C2,Red\n");
        for _ in 0..50 {
            text.push_str("garbage,,\n");
        }
        let f = file("cap.csv", &text);
        let (ind, rejected) = Indicators::load(&[f], 600);
        assert_eq!(ind.len(), 600);
        assert_eq!((rejected.over_cap, rejected.skipped), (400, 50));
        assert_eq!(rejected.named.len(), NAMED_REJECTIONS);
        let first = ind.lookup("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(first.threat_type.as_deref(), Some("C2"));
        assert!(
            ind.lookup("10.0.2.88".parse().unwrap()).is_none(),
            "beyond the cap"
        );
        // One allocation for a text repeated on every line…
        let a = ind.lookup("10.0.0.2".parse().unwrap()).unwrap();
        let b = ind.lookup("10.0.0.3".parse().unwrap()).unwrap();
        // And one for a set of columns repeated on every line (a network costs a pointer).
        assert!(
            std::ptr::eq(a, b),
            "10.0.0.2 and 10.0.0.3 share their columns"
        );
        let (a, b) = (a.tlp_level.as_ref().unwrap(), b.tlp_level.as_ref().unwrap());
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn longest_prefix_wins_across_files_and_families() {
        let csv = file(
            "a.csv",
            "indicator,threat_type,severity,is_active\n\
             10.0.0.0/8,Botnet,2,true\n\
             10.1.0.0/16,C2,4,true\n\
             10.1.2.3,Phishing,5,false\n\
             not-an-ip,Malware,1,true\n\
             10.9.9.9,Malware,seven,true\n",
        );
        let jsonl = file(
            "b.jsonl",
            "{\"indicator\": \"2001:db8::/32\", \"threat_type\": \"Proxy\", \"confidence\": \"80\"}\n\
             {\"indicator\": \"2001:db8::1\", \"threat_type\": \"DDoS\", \"tlp_level\": \"Amber\"}\n\
             {broken\n",
        );
        let (ind, rejected) = Indicators::load(&[csv.clone(), jsonl.clone()], 100);
        assert_eq!(ind.len(), 5);
        let lines: Vec<(PathBuf, usize)> = rejected
            .named
            .iter()
            .map(|r| (r.file.clone(), r.line))
            .collect();
        assert_eq!(lines, vec![(csv.clone(), 5), (csv, 6), (jsonl.clone(), 3)]);
        let t = |ip: &str| {
            ind.lookup(ip.parse().unwrap())
                .and_then(|i| i.threat_type.as_deref().map(str::to_owned))
        };
        assert_eq!(t("10.1.2.3").as_deref(), Some("Phishing"));
        assert_eq!(t("10.1.2.4").as_deref(), Some("C2"));
        assert_eq!(t("10.200.0.1").as_deref(), Some("Botnet"));
        assert_eq!(t("11.0.0.1"), None);
        assert_eq!(t("2001:db8::1").as_deref(), Some("DDoS"));
        assert_eq!(t("2001:db8::2").as_deref(), Some("Proxy"));
        assert_eq!(t("2001:db9::1"), None);
        let p = ind.lookup("10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(
            (p.severity, p.is_active.as_deref()),
            (Some(5), Some("false"))
        );
        // A file that changes is noticed.
        assert!(!ind.changed());
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&jsonl, "{\"indicator\": \"192.0.2.1\"}\n").unwrap();
        assert!(ind.changed());
    }
}
