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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write as _;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use super::delivery::{Outcome, Transport, parse_retry_after};
use super::spool::Batch;
use crate::config::{BodyFormat, HttpSinkConfig, Split};

/// An HTTP client with depmap's TLS choices: rustls, the system's roots unless a CA file is
/// given, an optional client certificate, a whole-request timeout, and HTTP errors returned as
/// answers (not errors) so that their status and `Retry-After` can be read.
pub fn client(
    timeout: Duration,
    ca_file: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ureq::Agent, String> {
    let roots = if ca_file.as_os_str().is_empty() {
        RootCerts::PlatformVerifier
    } else {
        RootCerts::new_with_certs(&pem_certificates(ca_file)?)
    };
    let mut tls = TlsConfig::builder().root_certs(roots);
    if let Some((cert_file, key_file)) = client_cert {
        let chain = pem_certificates(cert_file)?;
        let key_pem = fs::read(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
        let key =
            PrivateKey::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key_file.display()))?;
        // ureq builds its TLS configuration at the first connection and panics on a client
        // certificate rustls refuses: check it here, where it is one clear line at start.
        check_client_cert(&chain, &key_pem).map_err(|e| {
            format!(
                "{} / {}: not a usable client certificate and key: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    let config = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("depmap/", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(ureq::Agent::new_with_config(config))
}

/// The certificates of a PEM file (at least one).
fn pem_certificates(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let pem = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// An HTTP client for link-local metadata services (IMDS): never through a proxy, a short
/// timeout, HTTP errors returned as answers.
pub fn no_proxy_client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    )
}

/// Whether rustls accepts this certificate chain and key (PEM) for client authentication.
fn check_client_cert(chain: &[Certificate<'static>], key_pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty());
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    let certs = chain
        .iter()
        .map(|c| CertificateDer::from(c.der()).into_owned())
        .collect();
    builder
        .with_client_auth_cert(certs, key)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An HTTP answer as the sinks and metadata clients need it.
pub struct Answer {
    pub status: u16,
    /// `Retry-After`, when the server sent one that parses.
    pub retry_after: Option<Duration>,
    /// The body text, at most the limit read.
    pub body: String,
}

/// Reads an answer (status, `Retry-After`, at most `limit` bytes of body), or the transport
/// error as text. A redirect is an error too: the clients never follow one (ureq turned the
/// POST into a GET that another host answered 200 — the batch counted delivered and lost —
/// and sent the configured headers and credentials there: issue 12), so it is retried (the
/// batch stays spooled) and logged with where it pointed.
pub fn read_answer(
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    limit: u64,
) -> Result<Answer, String> {
    let mut resp = sent.map_err(|e| e.to_string())?;
    if resp.status().is_redirection() {
        let to = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(no Location)");
        return Err(format!(
            "HTTP {} redirect to {to}, not followed (records and credentials go only to the configured URL): point the URL there",
            resp.status().as_u16()
        ));
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_string()
        .unwrap_or_default();
    Ok(Answer {
        status: resp.status().as_u16(),
        retry_after,
        body,
    })
}

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

/// Gzip at the default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
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
    pub fn new(config: &HttpSinkConfig) -> Result<HttpTransport, String> {
        let cert = (!config.client_cert_file.as_os_str().is_empty()).then_some((
            config.client_cert_file.as_path(),
            config.client_key_file.as_path(),
        ));
        let agent = client(config.timeout, &config.ca_file, cert)?;
        let token = if !config.bearer_token_env.is_empty() {
            Token::Env(config.bearer_token_env.clone())
        } else if !config.bearer_token_file.as_os_str().is_empty() {
            let path = config.bearer_token_file.clone();
            fs::read_to_string(&path)
                .map_err(|e| format!("sink.http.bearer_token_file {}: {e}", path.display()))?;
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
            Err(e) => transport_failure(e),
        }
    }

    fn per_table(&self) -> bool {
        self.config.split == Split::Table
    }

    fn name(&self) -> &'static str {
        "http"
    }
}

/// Percent-encoding of a query-string value.
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
    for (i, line) in ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
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
