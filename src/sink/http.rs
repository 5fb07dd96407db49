//! `http` sink: each spooled batch is one POST.
//!
//! Body: NDJSON (`application/x-ndjson`) or a JSON array (`application/json`), gzip-compressed
//! by default (`Content-Encoding: gzip`). Headers: `X-Depmap-Batch-Id` (the same on every
//! attempt: deduplicate on it), `X-Depmap-Batch-Created` (when it was sealed; batches are sent
//! in that order), `X-Depmap-Records`, `X-Depmap-Table` (with `split = "table"`),
//! the configured extra headers, and `Authorization: Bearer` from a file (re-read when it
//! changes) or an environment variable. TLS is rustls, with the system's roots or a CA file,
//! and an optional client certificate.
//!
//! Answers: 2xx delivered; 408, 429, 5xx and transport errors retried (honouring
//! `Retry-After`); other 4xx rejected for good.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::BuildError;
use super::delivery::{Outcome, Transport};
use super::encoding::{Encoding, lines};
use super::spool::Batch;
use crate::config::{BodyFormat, HttpSinkConfig, Split};
use crate::http_client::{client, gzip, read_answer};

/// A send that never got an answer: retried.
pub fn transport_failure(reason: String) -> Outcome {
    Outcome::Retry {
        after: None,
        reason,
    }
}

/// Classifies an answer: 2xx delivered; 408, 429 and 5xx retried; other statuses rejected.
pub fn outcome_of(status: u16, retry_after: Option<Duration>, body: &str) -> Outcome {
    let reason = || {
        let snippet: String = body.chars().take(200).collect();
        format!("HTTP {status}: {}", snippet.trim())
    };
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry {
            after: retry_after,
            reason: reason(),
        },
        _ => Outcome::Rejected { reason: reason() },
    }
}

/// Where the bearer token comes from.
enum Token {
    None,
    Env(String),
    /// The file, its modification time when last read, and the token read.
    File(PathBuf, Option<SystemTime>, String),
}

pub struct HttpTransport {
    agent: ureq::Agent,
    config: HttpSinkConfig,
    token: Token,
}

impl HttpTransport {
    pub fn new(config: &HttpSinkConfig) -> Result<HttpTransport, BuildError> {
        let cert = (!config.client_cert_file.as_os_str().is_empty()).then_some((
            config.client_cert_file.as_path(),
            config.client_key_file.as_path(),
        ));
        let agent = client(config.timeout, &config.ca_file, cert)?;
        let token = if !config.bearer_token_env.is_empty() {
            Token::Env(config.bearer_token_env.clone())
        } else if !config.bearer_token_file.as_os_str().is_empty() {
            let path = config.bearer_token_file.clone();
            fs::read_to_string(&path).map_err(|source| BuildError::Credential {
                key: "sink.http.bearer_token_file",
                path: path.clone(),
                source,
            })?;
            Token::File(path, None, String::new())
        } else {
            Token::None
        };
        Ok(HttpTransport {
            agent,
            config: config.clone(),
            token,
        })
    }

    /// The current token (the file is read again when its modification time changes).
    fn bearer(&mut self) -> Option<String> {
        match &mut self.token {
            Token::None => None,
            Token::Env(var) => std::env::var(var.as_str())
                .ok()
                .map(|t| first_line(&t))
                .filter(|t| !t.is_empty()),
            Token::File(path, seen, token) => {
                let mtime = fs::metadata(&*path).and_then(|m| m.modified()).ok();
                if (mtime.is_none() || mtime != *seen)
                    && let Ok(t) = fs::read_to_string(&*path)
                {
                    *token = first_line(&t);
                    *seen = mtime;
                }
                (!token.is_empty()).then(|| token.clone())
            }
        }
    }
}

/// A secret's first line, trimmed: what README promises for token files (a second line, or
/// a line break in the variable, would make every request's header invalid).
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

impl Transport for HttpTransport {
    fn send(&mut self, batch: &Batch) -> Outcome {
        let table = batch.table.as_deref().unwrap_or("");
        let url = self.config.url.replace("{table}", table);
        let (content_type, body) = match self.config.format {
            BodyFormat::Ndjson => ("application/x-ndjson", batch.body.clone()),
            BodyFormat::Json => ("application/json", json_array(&batch.body)),
        };
        let body = if self.config.gzip { gzip(&body) } else { body };
        let bearer = self.bearer();
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", content_type)
            .header("X-Depmap-Batch-Id", &batch.id)
            .header("X-Depmap-Records", batch.records.to_string())
            .header(
                "X-Depmap-Batch-Created",
                crate::records::datetime(batch.created),
            );
        if self.config.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        if batch.table.is_some() {
            req = req.header("X-Depmap-Table", table);
        }
        for (k, v) in &self.config.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(t) = bearer {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        match read_answer(req.send(&body[..]), 4096) {
            Ok(a) => outcome_of(a.status, a.retry_after, &a.body),
            Err(e) => transport_failure(e.to_string()),
        }
    }

    fn encoding(&self) -> Encoding {
        Encoding::Records
    }

    fn per_table(&self) -> bool {
        self.config.split == Split::Table
    }

    fn name(&self) -> &'static str {
        "http"
    }
}

/// Percent-encoding (RFC 3986: everything but the unreserved set) of a value for a query
/// string, a form body or a path segment. Hand-written, a dozen lines, unit-tested: the values
/// go into all three (ClickHouse's query, the token form, the tenant and DCR ids in paths), and
/// ureq encodes only query pairs; the `url` crate would be a dependency for these few calls.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// NDJSON lines as one JSON array.
pub fn json_array(ndjson: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ndjson.len() + 2);
    out.push(b'[');
    for (i, line) in lines(ndjson).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::parse_retry_after;

    #[test]
    fn a_token_is_the_first_line_of_its_file() {
        assert_eq!(first_line("s3cret\nsecond line\n"), "s3cret");
        assert_eq!(first_line("  s3cret \r\n"), "s3cret");
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(outcome_of(204, None, ""), Outcome::Delivered);
        assert_eq!(
            outcome_of(429, parse_retry_after("3"), "slow down"),
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "HTTP 429: slow down".into()
            }
        );
        assert!(matches!(
            outcome_of(503, None, ""),
            Outcome::Retry { after: None, .. }
        ));
        assert!(matches!(outcome_of(408, None, ""), Outcome::Retry { .. }));
        assert!(matches!(
            outcome_of(400, parse_retry_after("1"), "bad"),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            outcome_of(404, None, ""),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn ndjson_becomes_an_array() {
        assert_eq!(
            json_array(b"{\"a\":1}\n{\"b\":2}\n"),
            b"[{\"a\":1},{\"b\":2}]"
        );
        assert_eq!(json_array(b""), b"[]");
    }
}
