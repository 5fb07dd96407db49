//! HTTP plumbing shared by the remote sinks and the metadata clients (IMDS, managed-identity
//! tokens): the client with depmap's TLS choices, the answer reader that never follows a
//! redirect, `Retry-After`, gzip. Below both `collect` and `sink`, so neither imports the
//! other for it.
//!
//! ureq, not reqwest (the spec's first choice): each remote sink sends from a plain thread of
//! its own, one request at a time; ureq 3 is a blocking client on rustls with no async
//! runtime, where reqwest's blocking client runs a tokio runtime on a further thread per
//! client. (The metrics endpoint, which serves many clients at once, is on tokio.)

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// Why a client could not be built (a CA file, a client certificate or key).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{} / {}: not a usable client certificate and key: {reason}", cert.display(), key.display())]
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// An HTTP client with depmap's TLS choices: rustls, the system's roots unless a CA file is
/// given, an optional client certificate, a whole-request timeout, and HTTP errors returned as
/// answers (not errors) so that their status and `Retry-After` can be read.
pub fn client(
    timeout: Duration,
    ca_file: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ureq::Agent, ClientError> {
    let roots = if ca_file.as_os_str().is_empty() {
        RootCerts::PlatformVerifier
    } else {
        RootCerts::new_with_certs(&pem_certificates(ca_file)?)
    };
    let mut tls = TlsConfig::builder().root_certs(roots);
    if let Some((cert_file, key_file)) = client_cert {
        let chain = pem_certificates(cert_file)?;
        let key_pem = fs::read(key_file).map_err(|source| ClientError::Read {
            path: key_file.to_path_buf(),
            source,
        })?;
        let key = PrivateKey::from_pem(&key_pem).map_err(|e| ClientError::Key {
            path: key_file.to_path_buf(),
            reason: e.to_string(),
        })?;
        // ureq builds its TLS configuration at the first connection and panics on a client
        // certificate rustls refuses: check it here, where it is one clear line at start.
        check_client_cert(&chain, &key_pem).map_err(|reason| ClientError::ClientCert {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            reason,
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
fn pem_certificates(path: &Path) -> Result<Vec<Certificate<'static>>, ClientError> {
    let pem = fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(ClientError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The Azure Instance Metadata Service as depmap asks it, for the instance's facts
/// (`collect::imds`) and for managed-identity tokens (the azure_logs sink): `GET
/// <endpoint><path>` with `Metadata: true` (IMDS refuses requests without it), never through
/// a proxy (IMDS refuses forwarded requests, and its tokens must not pass one), a short
/// timeout, HTTP errors returned as answers.
pub struct MetadataService {
    agent: ureq::Agent,
    endpoint: String,
}

impl MetadataService {
    pub fn new(endpoint: &str, timeout: Duration) -> MetadataService {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .proxy(None)
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .max_redirects(0)
                .build(),
        );
        MetadataService {
            agent,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    /// `path` with its query (`/metadata/instance?api-version=...`); at most `limit` bytes of
    /// the answer's body are read.
    pub fn get(&self, path: &str, limit: u64) -> Result<Answer, AnswerError> {
        let url = format!("{}{path}", self.endpoint);
        read_answer(
            self.agent.get(&url).header("Metadata", "true").call(),
            limit,
        )
    }
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

/// A request that got no answer to use.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Connection refused or reset, timeout, TLS, DNS: no answer at all.
    #[error(transparent)]
    Transport(#[from] ureq::Error),
    #[error(
        "HTTP {status} redirect to {to}, not followed (records and credentials go only to the configured URL): point the URL there"
    )]
    Redirect { status: u16, to: String },
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
) -> Result<Answer, AnswerError> {
    let mut resp = sent?;
    if resp.status().is_redirection() {
        let to = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(no Location)");
        return Err(AnswerError::Redirect {
            status: resp.status().as_u16(),
            to: to.to_string(),
        });
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

/// Gzip at the default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
