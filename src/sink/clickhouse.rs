//! `clickhouse` sink: one `INSERT INTO <db>.<Table> FORMAT JSONEachRow` per spooled batch (a
//! batch holds one table), over ClickHouse's HTTP interface. Tables: `packaging/clickhouse/`.
//!
//! Records are spooled without their `null` members (`Encoding::Clickhouse`, the reason is
//! there), and the URL asks for `date_time_input_format=best_effort` (the millisecond
//! RFC 3339 times) and `input_format_skip_unknown_fields=1` (a newer depmap's extra columns do
//! not stop inserts into an older schema).
//!
//! Answers: 200 delivered. ClickHouse's status does not separate bad data from server trouble
//! (18.16 answers most malformed input with 500), so errors are classified by the exception
//! code in the body (`Code: N`): a short list of transient codes, transport errors, 408, 502,
//! 503, 504 and 5xx without a code are retried; other codes, and 400/401/403/404, are
//! rejected (bad data, schema or credentials: sending the same body again cannot help).

use std::fs;
use std::time::Duration;

use super::BuildError;
use super::delivery::{Outcome, Transport};
use super::encoding::Encoding;
use super::http::{percent_encode, transport_failure};
use super::spool::Batch;
use crate::config::ClickhouseSinkConfig;
use crate::http_client::{client, gzip, read_answer};

/// Exception codes of transient server states (names from ClickHouse's ErrorCodes.cpp).
const TRANSIENT_CODES: [u32; 9] = [
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
];

pub struct ClickhouseTransport {
    agent: ureq::Agent,
    config: ClickhouseSinkConfig,
    password: Option<String>,
}

impl ClickhouseTransport {
    pub fn new(config: &ClickhouseSinkConfig) -> Result<ClickhouseTransport, BuildError> {
        let agent = client(config.timeout, &config.ca_file, None)?;
        let password = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            let text = fs::read_to_string(&config.password_file).map_err(|source| {
                BuildError::Credential {
                    key: "sink.clickhouse.password_file",
                    path: config.password_file.clone(),
                    source,
                }
            })?;
            Some(text.lines().next().unwrap_or("").to_string())
        };
        Ok(ClickhouseTransport {
            agent,
            config: config.clone(),
            password,
        })
    }

    fn url(&self, table: &str) -> String {
        let query = format!(
            "INSERT INTO {}.{} FORMAT JSONEachRow",
            self.config.database, table
        );
        format!(
            "{}/?query={}&date_time_input_format=best_effort&input_format_skip_unknown_fields=1",
            self.config.url.trim_end_matches('/'),
            percent_encode(&query)
        )
    }
}

impl Transport for ClickhouseTransport {
    fn send(&mut self, batch: &Batch) -> Outcome {
        let Some(table) = batch.table.as_deref() else {
            return Outcome::Rejected {
                reason: "a batch without a table (spooled by another sink kind)".into(),
            };
        };
        let gzipped;
        let body = if self.config.gzip {
            gzipped = gzip(&batch.body);
            &gzipped
        } else {
            &batch.body
        };
        let mut req = self
            .agent
            .post(self.url(table))
            .header("X-ClickHouse-User", &self.config.user)
            .header("X-Depmap-Batch-Id", &batch.id);
        if let Some(p) = &self.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        if self.config.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        match read_answer(req.send(&body[..]), 4096) {
            Ok(a) if a.status == 200 => Outcome::Delivered,
            Ok(a) => classify(a.status, &a.body, a.retry_after),
            Err(e) => transport_failure(e.to_string()),
        }
    }

    fn encoding(&self) -> Encoding {
        Encoding::Clickhouse
    }

    fn per_table(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "clickhouse"
    }
}

/// Classifies a ClickHouse error answer (see the module comment).
fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Outcome {
    let reason = format!(
        "HTTP {status}: {}",
        body.chars().take(200).collect::<String>().trim()
    );
    let code = body.strip_prefix("Code: ").and_then(|rest| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    });
    let transient = match code {
        Some(c) => TRANSIENT_CODES.contains(&c),
        None => matches!(status, 408 | 429 | 500..=599),
    } || matches!(status, 408 | 502 | 503 | 504);
    if transient {
        Outcome::Retry {
            after: retry_after,
            reason,
        }
    } else {
        Outcome::Rejected { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_their_exception_code() {
        // 18.16 answers bad data with 500: rejected, not retried forever.
        let bad = "Code: 27, e.displayText() = DB::Exception: Cannot parse input";
        assert!(matches!(classify(500, bad, None), Outcome::Rejected { .. }));
        let busy = "Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)";
        assert!(matches!(classify(500, busy, None), Outcome::Retry { .. }));
        assert!(matches!(classify(503, "", None), Outcome::Retry { .. }));
        assert!(matches!(
            classify(500, "proxy error", None),
            Outcome::Retry { .. }
        ));
        let auth = "Code: 193, e.displayText() = DB::Exception: Wrong password for user depmap";
        assert!(matches!(
            classify(401, auth, None),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(404, "Code: 60, Table", None),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn the_insert_url_is_encoded() {
        let t = ClickhouseTransport::new(&ClickhouseSinkConfig::default()).unwrap();
        assert_eq!(
            t.url("VMConnection"),
            "http://127.0.0.1:8123/?query=INSERT%20INTO%20depmap.VMConnection%20FORMAT%20JSONEachRow&date_time_input_format=best_effort&input_format_skip_unknown_fields=1"
        );
    }
}
