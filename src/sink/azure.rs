//! `azure_logs` sink: the Azure Monitor Logs Ingestion API (research/azure-tables.md §6).
//!
//! Each spooled batch holds one table and goes to the DCR stream `<stream_prefix><Table>`
//! (`POST <endpoint>/dataCollectionRules/<dcr>/streams/<stream>?api-version=2023-01-01`) as
//! JSON arrays of at most `max_request_bytes` (1 MB, the service's limit, counted on the
//! uncompressed JSON like the official SDK), gzip-compressed, with a bearer token and an
//! `x-ms-client-request-id` that is the same on every attempt of a chunk. Records are spooled
//! as the custom tables of `packaging/azure/` declare them (`Encoding::AzureLogs`: no `Type`,
//! `_ResourceId` as `ResourceId`), so a chunk is their lines joined into an array.
//!
//! Tokens: Entra ID client credentials (`<authority>/<tenant>/oauth2/v2.0/token`) or the
//! managed identity from IMDS (`Metadata: true`, never through a proxy), cached and renewed
//! before they expire (at 80 % of their life, or 5 minutes before the end), and renewed at once
//! after a 401.
//!
//! Answers: 204 delivered; 413 splits the chunk in two and sends the halves; a single record
//! the service refuses as too large is dropped with a warning; 401 renews the token and tries
//! again once; 403 (a role assignment still propagating) and 408, 429, 5xx are retried
//! (honouring `Retry-After`); other 4xx are rejected. The chunks of a batch already delivered
//! are not sent again when a later chunk fails (within one run of depmap).

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::BuildError;
use super::delivery::{Outcome, Transport};
use super::encoding::{Encoding, lines};
use super::http::{outcome_of, percent_encode, transport_failure};
use super::spool::Batch;
use crate::config::{AzureAuth, AzureLogsSinkConfig};
use crate::http_client::{MetadataService, client, gzip, read_answer};

const API_VERSION: &str = "2023-01-01";

struct Token {
    value: String,
    renew_at: Instant,
}

pub struct AzureLogsTransport {
    agent: ureq::Agent,
    /// For managed-identity tokens.
    imds: MetadataService,
    config: AzureLogsSinkConfig,
    secret: Option<String>,
    token: Option<Token>,
    /// Chunks already delivered of batches not yet finished, by batch id.
    delivered_chunks: HashMap<String, usize>,
}

impl AzureLogsTransport {
    pub fn new(config: &AzureLogsSinkConfig) -> Result<AzureLogsTransport, BuildError> {
        let agent = client(config.timeout, &config.ca_file, None)?;
        let imds = MetadataService::new(&config.imds_endpoint, Duration::from_secs(10));
        let secret = match config.auth {
            AzureAuth::ClientSecret => {
                let text = fs::read_to_string(&config.client_secret_file).map_err(|source| {
                    BuildError::Credential {
                        key: "sink.azure_logs.client_secret_file",
                        path: config.client_secret_file.clone(),
                        source,
                    }
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            AzureAuth::ManagedIdentity => None,
        };
        Ok(AzureLogsTransport {
            agent,
            imds,
            config: config.clone(),
            secret,
            token: None,
            delivered_chunks: HashMap::new(),
        })
    }

    /// A valid token, fetched or renewed when due.
    fn token(&mut self) -> Result<String, Outcome> {
        if let Some(t) = &self.token
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let answer = match self.config.auth {
            AzureAuth::ClientSecret => {
                let url = format!(
                    "{}/{}/oauth2/v2.0/token",
                    self.config.authority.trim_end_matches('/'),
                    percent_encode(&self.config.tenant_id)
                );
                let form = format!(
                    "client_id={}&client_secret={}&scope={}&grant_type=client_credentials",
                    percent_encode(&self.config.client_id),
                    percent_encode(self.secret.as_deref().unwrap_or("")),
                    percent_encode(&self.config.scope)
                );
                let sent = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .send(form.as_bytes());
                read_answer(sent, 64 * 1024)
            }
            AzureAuth::ManagedIdentity => {
                let mut path = format!(
                    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    percent_encode(&self.config.resource)
                );
                if !self.config.managed_identity_client_id.is_empty() {
                    path.push_str("&client_id=");
                    path.push_str(&percent_encode(&self.config.managed_identity_client_id));
                }
                self.imds.get(&path, 64 * 1024)
            }
        };
        let answer = answer.map_err(|e| transport_failure(format!("token: {e}")))?;
        let (status, body) = (answer.status, answer.body);
        if status != 200 {
            // A wrong secret is a configuration error, but batches must wait for the fix,
            // not be thrown away: retried with backoff, and logged by the sender.
            return Err(Outcome::Retry {
                after: None,
                reason: format!(
                    "token: HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
            });
        }
        let parsed: Value = serde_json::from_str(&body).map_err(|e| Outcome::Retry {
            after: None,
            reason: format!("token answer: {e}"),
        })?;
        let value = parsed["access_token"].as_str().unwrap_or("").to_string();
        // `expires_in` is a number from Entra ID and a string from IMDS.
        let lifetime = match &parsed["expires_in"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(300);
        if value.is_empty() {
            return Err(Outcome::Retry {
                after: None,
                reason: "token answer without access_token".into(),
            });
        }
        let lifetime = Duration::from_secs(lifetime);
        let early = (lifetime / 5).min(Duration::from_secs(300));
        self.token = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + lifetime - early,
        });
        Ok(value)
    }

    /// Sends one JSON array; splits it on 413.
    fn send_chunk(&mut self, url: &str, records: &[&[u8]], request_id: &str) -> Outcome {
        let mut body = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(r);
        }
        body.push(b']');
        let body = if self.config.gzip { gzip(&body) } else { body };
        let mut renewed = false;
        loop {
            let token = match self.token() {
                Ok(t) => t,
                Err(o) => return o,
            };
            let mut req = self
                .agent
                .post(url)
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/json")
                .header("x-ms-client-request-id", request_id);
            if self.config.gzip {
                req = req.header("Content-Encoding", "gzip");
            }
            let answer = match read_answer(req.send(&body[..]), 64 * 1024) {
                Ok(a) => a,
                Err(e) => return transport_failure(e.to_string()),
            };
            return match answer.status {
                401 if !renewed => {
                    self.token = None;
                    renewed = true;
                    continue;
                }
                413 if records.len() > 1 => {
                    let (a, b) = records.split_at(records.len() / 2);
                    let half = |h: &str| {
                        uuid::Uuid::new_v5(
                            &uuid::Uuid::NAMESPACE_OID,
                            format!("{request_id}/{h}").as_bytes(),
                        )
                        .to_string()
                    };
                    match self.send_chunk(url, a, &half("a")) {
                        Outcome::Delivered => self.send_chunk(url, b, &half("b")),
                        other => other,
                    }
                }
                413 => {
                    tracing::warn!(
                        bytes = records.first().map_or(0, |r| r.len()),
                        "a record larger than the service takes was dropped"
                    );
                    Outcome::Delivered
                }
                403 => Outcome::Retry {
                    after: answer.retry_after,
                    reason: format!(
                        "HTTP 403 (role assignment missing or still propagating): {}",
                        answer.body.chars().take(200).collect::<String>()
                    ),
                },
                s => outcome_of(s, answer.retry_after, &answer.body),
            };
        }
    }
}

/// Groups records into chunks whose JSON array stays within `max` bytes.
fn chunks<'a>(records: impl Iterator<Item = &'a [u8]>, max: usize) -> Vec<Vec<&'a [u8]>> {
    let mut out: Vec<Vec<&[u8]>> = Vec::new();
    let mut size = 2;
    for r in records {
        let len = r.len() + 1;
        if out.is_empty() || size + len > max {
            out.push(Vec::new());
            size = 2;
        }
        size += len;
        if let Some(last) = out.last_mut() {
            last.push(r);
        }
    }
    out
}

impl Transport for AzureLogsTransport {
    fn send(&mut self, batch: &Batch) -> Outcome {
        let Some(table) = batch.table.as_deref() else {
            return Outcome::Rejected {
                reason: "a batch without a table (spooled by another sink kind)".into(),
            };
        };
        let url = format!(
            "{}/dataCollectionRules/{}/streams/{}{}?api-version={API_VERSION}",
            self.config.endpoint.trim_end_matches('/'),
            percent_encode(&self.config.dcr_immutable_id),
            percent_encode(&self.config.stream_prefix),
            table
        );
        let parts = chunks(lines(&batch.body), self.config.max_request_bytes);
        let done = self.delivered_chunks.get(&batch.id).copied().unwrap_or(0);
        for (i, part) in parts.iter().enumerate().skip(done) {
            // The same request id on every attempt of this chunk.
            let request_id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{}/{i}", batch.id).as_bytes(),
            )
            .to_string();
            match self.send_chunk(&url, part, &request_id) {
                Outcome::Delivered => {
                    self.delivered_chunks.insert(batch.id.clone(), i + 1);
                }
                other => return other,
            }
        }
        self.delivered_chunks.remove(&batch.id);
        Outcome::Delivered
    }

    fn encoding(&self) -> Encoding {
        Encoding::AzureLogs
    }

    fn per_table(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "azure_logs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_within_the_limit() {
        let record = [b'x'; 99];
        let parts = chunks(std::iter::repeat_n(&record[..], 10), 350);
        // Each record takes 100 bytes with its comma, the brackets 2: three per chunk.
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        // A record alone larger than the limit still goes, alone (the service decides).
        let (big, small) = (vec![b'x'; 500], vec![b'y'; 10]);
        let parts = chunks([&big[..], &small[..]].into_iter(), 350);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
    }
}
