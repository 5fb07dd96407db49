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

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Deserialize;

/// One indicator's columns, as the records carry them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Indicator {
    pub net: Option<IpNet>,
    pub threat_type: Option<String>,
    pub description: Option<String>,
    pub tlp_level: Option<String>,
    pub confidence: Option<String>,
    pub severity: Option<i32>,
    pub first_reported: Option<String>,
    pub last_reported: Option<String>,
    pub is_active: Option<String>,
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

/// The loaded indicators, by prefix length, longest first.
#[derive(Debug, Default)]
pub struct Indicators {
    /// (prefix length, is IPv6) → network address → indicator.
    tables: Vec<((u8, bool), HashMap<IpAddr, Indicator>)>,
    len: usize,
    files: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Indicators {
    /// Loads `files`; returns the indicators and the lines skipped.
    pub fn load(files: &[PathBuf]) -> (Indicators, Vec<Rejected>) {
        let mut all = Vec::new();
        let mut rejected = Vec::new();
        let mut stamps = Vec::new();
        for file in files {
            stamps.push((file.clone(), mtime(file)));
            // Streamed as bytes: a file need not fit in memory twice, and a line that is not
            // UTF-8 is that line's problem only (read whole as text, one bad byte dropped every
            // indicator of the file: issue 12).
            match fs::File::open(file) {
                Ok(f) => parse_file(file, std::io::BufReader::new(f), &mut all, &mut rejected),
                Err(e) => rejected.push(Rejected {
                    file: file.clone(),
                    line: 0,
                    reason: format!("cannot read: {e}"),
                }),
            }
        }
        let mut by_len: HashMap<(u8, bool), HashMap<IpAddr, Indicator>> = HashMap::new();
        let mut len = 0;
        for ind in all {
            let Some(net) = ind.net else { continue };
            let key = (net.prefix_len(), net.addr().is_ipv6());
            // A later line for the same network replaces an earlier one.
            if by_len
                .entry(key)
                .or_default()
                .insert(net.network(), ind)
                .is_none()
            {
                len += 1;
            }
        }
        let mut tables: Vec<_> = by_len.into_iter().collect();
        tables.sort_by_key(|t| std::cmp::Reverse(t.0.0));
        (
            Indicators {
                tables,
                len,
                files: stamps,
            },
            rejected,
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

fn parse_file(
    file: &Path,
    text: impl std::io::BufRead,
    out: &mut Vec<Indicator>,
    rejected: &mut Vec<Rejected>,
) {
    let reject = |line: usize, reason: String| Rejected {
        file: file.to_path_buf(),
        line,
        reason,
    };
    let mut accept =
        |line: usize, l: Line, rejected: &mut Vec<Rejected>| match parse_net(&l.indicator) {
            Ok(net) => out.push(Indicator {
                net: Some(net),
                threat_type: l.threat_type,
                description: l.description,
                tlp_level: l.tlp_level,
                confidence: l.confidence,
                severity: l.severity,
                first_reported: l.first_reported,
                last_reported: l.last_reported,
                is_active: l.is_active,
            }),
            Err(e) => rejected.push(reject(line, e)),
        };
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
                Ok(l) => accept(line, l, rejected),
                Err(e) => rejected.push(reject(line, e.to_string())),
            }
        }
    } else {
        for (i, raw) in text.split(b'\n').enumerate() {
            let raw = match raw {
                Ok(bytes) => bytes,
                Err(e) => {
                    rejected.push(reject(i + 1, format!("cannot read: {e}")));
                    break;
                }
            };
            let Ok(raw) = std::str::from_utf8(&raw) else {
                rejected.push(reject(i + 1, "not UTF-8".into()));
                continue;
            };
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            match serde_json::from_str::<Line>(raw) {
                Ok(l) => accept(i + 1, l, rejected),
                Err(e) => rejected.push(reject(i + 1, e.to_string())),
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
        let (ind, rejected) = Indicators::load(&[csv, jsonl]);
        assert_eq!(ind.len(), 4, "{rejected:?}");
        let lines: Vec<usize> = rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 2], "{rejected:?}");
        let _ = fs::remove_dir_all(&dir);
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
        let (ind, rejected) = Indicators::load(&[csv.clone(), jsonl.clone()]);
        assert_eq!(ind.len(), 5);
        let lines: Vec<(PathBuf, usize)> =
            rejected.iter().map(|r| (r.file.clone(), r.line)).collect();
        assert_eq!(lines, vec![(csv.clone(), 5), (csv, 6), (jsonl.clone(), 3)]);
        let t = |ip: &str| {
            ind.lookup(ip.parse().unwrap())
                .and_then(|i| i.threat_type.clone())
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
