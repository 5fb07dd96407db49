//! Configuration: the TOML file of SPEC §3. Unknown keys are errors, durations are written
//! like `500ms`, `10s`, `5m`, `1h`, and every error is one line naming the file and the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default configuration file; when it is missing the defaults apply.
pub const DEFAULT_PATH: &str = "/etc/depmap/depmap.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub collect: CollectConfig,
    pub sink: SinkConfig,
    pub enrich: EnrichConfig,
    pub metrics: MetricsConfig,
}

/// Enrichment sources.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Malicious-IP indicator files: CSV (`.csv`, header line) or JSON lines; reloaded when
    /// they change.
    pub indicator_files: Vec<PathBuf>,
    /// Most indicators (networks) loaded from them; the rest are counted and logged.
    pub max_indicators: usize,
    /// When to ask the Azure Instance Metadata Service.
    pub azure_metadata: AzureMetadata,
    /// Where it answers (tests point it at a local server).
    pub imds_endpoint: String,
    /// A MaxMind-format database (.mmdb) for RemoteCountry/Latitude/Longitude; empty: none.
    pub geoip_database: PathBuf,
    /// Passive capture of received DNS answers (needs CAP_NET_RAW) for RemoteDnsQuestions and
    /// RemoteDnsCanonicalNames.
    pub dns_capture: bool,
    /// Most addresses the DNS cache holds.
    pub dns_cache_entries: usize,
    /// Most bytes the DNS cache holds (names and per-address cost, estimated).
    pub dns_cache_bytes: usize,
    /// Reverse (PTR) lookups of addresses no captured answer named (they send DNS queries).
    pub reverse_lookups: bool,
    pub reverse_lookups_per_second: u32,
    /// Where Docker keeps its containers' state: `containers/<id>/config.v2.json` names a
    /// container (VMProcess `Group`).
    pub docker_dir: PathBuf,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            indicator_files: Vec::new(),
            azure_metadata: AzureMetadata::Auto,
            imds_endpoint: "http://169.254.169.254".into(),
            geoip_database: PathBuf::new(),
            dns_capture: false,
            max_indicators: 1_000_000,
            dns_cache_entries: 65_536,
            dns_cache_bytes: 16 << 20,
            reverse_lookups: false,
            reverse_lookups_per_second: 5,
            docker_dir: PathBuf::from("/var/lib/docker"),
        }
    }
}

/// When depmap asks the Azure Instance Metadata Service.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AzureMetadata {
    /// Only on an Azure VM, recognised by its DMI chassis asset tag.
    Auto,
    Always,
    Never,
}

/// Self-metrics in Prometheus text format.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on (e.g. `127.0.0.1:9464`); empty: off.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `Computer` column; empty means the host's FQDN, else its hostname.
    pub computer: String,
    /// `AgentId`; empty means UUIDv5 of /etc/machine-id (persisted random UUID if absent).
    pub agent_id: String,
    /// Where depmap keeps its state (agent id, records of the file sink).
    pub state_dir: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            computer: String::new(),
            agent_id: String::new(),
            state_dir: PathBuf::from("/var/lib/depmap"),
        }
    }
}

/// Which processes get VMProcess records.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProcessScope {
    /// Processes that hold TCP sockets or bound UDP ports.
    Connected,
    /// Every process.
    All,
}

/// Whether the kernel event source (eBPF) is used (`collect.events`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventsMode {
    /// Used where the kernel and the privileges allow, else polling alone.
    Auto,
    /// Required: depmap does not start without it.
    Ebpf,
    /// Polling alone.
    Off,
}

/// Which network namespaces are read (`collect.namespaces`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamespacesMode {
    /// depmap's own only (needs no CAP_SYS_ADMIN).
    Own,
    /// Every network namespace of the host (containers): needs CAP_SYS_ADMIN (setns) and
    /// CAP_SYS_PTRACE.
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// VMConnection/VMBoundPort window; windows align to multiples since the epoch.
    #[serde(with = "duration")]
    pub window: Duration,
    /// Period of the full sock_diag dump.
    #[serde(with = "duration")]
    pub socket_poll: Duration,
    /// Period of VMComputer/VMProcess re-emission.
    #[serde(with = "duration")]
    pub inventory_interval: Duration,
    /// Period of the hot-set re-reads (exact lookups of the sockets active in the last dump,
    /// for response times); must divide `socket_poll`; at or above it there are none.
    #[serde(with = "duration")]
    pub hot_poll: Duration,
    /// Largest hot set; 0 turns hot polls off.
    pub hot_sockets: usize,
    /// Most TCP connections tracked at once; beyond it new ones are shed (counted, logged).
    pub max_connections: usize,
    /// Most process pools kept at once; beyond it new processes are not attributed.
    pub max_pools: usize,
    /// Share of one core the socket polls may use (`"1%"`); `"0%"` means no limit. Beyond it
    /// full dumps are spread out (see `schedule`).
    pub cpu_budget: CpuBudget,
    /// Dump IPv6 sockets too.
    pub ipv6: bool,
    pub processes: ProcessScope,
    /// The kernel event source: owners of short connections, exact response times.
    pub events: EventsMode,
    /// Network namespaces read: depmap's own, or every one (containers).
    pub namespaces: NamespacesMode,
    /// UDP: bound ports (VMBoundPort, `Protocol = "udp"`) from the dumps.
    pub udp: bool,
}

impl CollectConfig {
    /// The loop's tick: `hot_poll` when hot polls are on, else `socket_poll`.
    pub fn tick(&self) -> Duration {
        if self.hot_sockets > 0 && self.hot_poll < self.socket_poll {
            self.hot_poll
        } else {
            self.socket_poll
        }
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            window: Duration::from_secs(60),
            socket_poll: Duration::from_secs(1),
            inventory_interval: Duration::from_secs(3600),
            hot_poll: Duration::from_millis(250),
            hot_sockets: 512,
            max_connections: 200_000,
            max_pools: 20_000,
            cpu_budget: CpuBudget(1.0),
            ipv6: true,
            processes: ProcessScope::Connected,
            events: EventsMode::Auto,
            namespaces: NamespacesMode::Own,
            udp: true,
        }
    }
}

/// A share of one core, written as a percentage: `"1%"`, `"0.5%"`, `"0%"` (no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuBudget(pub f64);

impl CpuBudget {
    /// The budget as a fraction of one core (0: no limit).
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for CpuBudget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a percentage of one core between 0% and 100% (e.g. \"1%\")"
                ))
            })?;
        Ok(CpuBudget(value))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    File,
    Stdout,
    Http,
    Clickhouse,
    AzureLogs,
}

impl SinkKind {
    /// Sinks that send over the network, through the spool.
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            SinkKind::Http | SinkKind::Clickhouse | SinkKind::AzureLogs
        )
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub kind: SinkKind,
    pub file: FileSinkConfig,
    pub delivery: DeliveryConfig,
    pub http: HttpSinkConfig,
    pub clickhouse: ClickhouseSinkConfig,
    pub azure_logs: AzureLogsSinkConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::File,
            file: FileSinkConfig::default(),
            delivery: DeliveryConfig::default(),
            http: HttpSinkConfig::default(),
            clickhouse: ClickhouseSinkConfig::default(),
            azure_logs: AzureLogsSinkConfig::default(),
        }
    }
}

/// What to do with a batch the collector refuses for good (a 4xx other than 408/429).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnReject {
    /// Moved to `<spool>/rejected/` (the newest 100 kept) for a person to look at.
    SetAside,
    /// Deleted.
    Drop,
}

/// Batching, spool and retries of the remote sinks (http, clickhouse, azure_logs).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Spool directory; empty means `<state_dir>/spool/<sink kind>`.
    pub spool_dir: PathBuf,
    /// Most bytes the spool holds; beyond it the oldest batches are dropped (counted, logged).
    pub spool_max_bytes: u64,
    /// Batches older than this are dropped unsent (counted, logged).
    #[serde(with = "duration")]
    pub spool_max_age: Duration,
    pub on_reject: OnReject,
    /// A batch is sealed (spooled) when it reaches this many records...
    pub batch_max_records: usize,
    /// ... or this many bytes of NDJSON (before compression) ...
    pub batch_max_bytes: usize,
    /// ... or when its first record has waited this long.
    #[serde(with = "duration")]
    pub batch_max_age: Duration,
    /// Longest wait between two attempts (exponential backoff with jitter from 1 s).
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// At shutdown, how long to keep sending what is spooled (the rest is sent after the
    /// next start).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            spool_dir: PathBuf::new(),
            spool_max_bytes: 256 << 20,
            spool_max_age: Duration::from_secs(48 * 3600),
            on_reject: OnReject::SetAside,
            batch_max_records: 5_000,
            batch_max_bytes: 4 << 20,
            batch_max_age: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl DeliveryConfig {
    pub fn spool_dir(&self, state_dir: &Path, kind: SinkKind) -> PathBuf {
        if self.spool_dir.as_os_str().is_empty() {
            let name = match kind {
                SinkKind::Http => "http",
                SinkKind::Clickhouse => "clickhouse",
                SinkKind::AzureLogs => "azure_logs",
                SinkKind::File => "file",
                SinkKind::Stdout => "stdout",
            };
            state_dir.join("spool").join(name)
        } else {
            self.spool_dir.clone()
        }
    }
}

/// Body format of the http sink.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// One JSON record a line.
    Ndjson,
    /// One JSON array of records.
    Json,
}

/// How the http sink groups records into requests.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Records of every table together, each with its `Type`.
    Mixed,
    /// One table per request (`X-Depmap-Table`, and `{table}` in the URL).
    Table,
}

/// TLS and timeout settings shared by the HTTP-based sinks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSinkConfig {
    /// Where batches are POSTed; `{table}` is replaced by the table name (with `split = "table"`).
    pub url: String,
    pub format: BodyFormat,
    pub split: Split,
    pub gzip: bool,
    /// Whole-request timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Extra request headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Bearer token read from this file (re-read when it changes) ...
    pub bearer_token_file: PathBuf,
    /// ... or from this environment variable. Never from the command line; never logged.
    pub bearer_token_env: String,
    /// PEM file of CA certificates to trust instead of the system's.
    pub ca_file: PathBuf,
    /// PEM client certificate chain and private key, for mutual TLS.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        HttpSinkConfig {
            url: String::new(),
            format: BodyFormat::Ndjson,
            split: Split::Mixed,
            gzip: true,
            timeout: Duration::from_secs(30),
            headers: Default::default(),
            bearer_token_file: PathBuf::new(),
            bearer_token_env: String::new(),
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
        }
    }
}

/// How the azure_logs sink gets its tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AzureAuth {
    /// Entra ID client credentials (an app registration's id and secret).
    ClientSecret,
    /// The VM's managed identity, from the Instance Metadata Service.
    ManagedIdentity,
}

/// Azure Monitor Logs Ingestion API (packaging/azure/ holds the tables and the DCR).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AzureLogsSinkConfig {
    /// The DCR's logs ingestion endpoint (or a data collection endpoint).
    pub endpoint: String,
    pub dcr_immutable_id: String,
    /// Streams are `<stream_prefix><Table>`.
    pub stream_prefix: String,
    pub auth: AzureAuth,
    pub tenant_id: String,
    pub client_id: String,
    /// File holding the client secret (first line).
    pub client_secret_file: PathBuf,
    /// Token URL: `<authority>/<tenant_id>/oauth2/v2.0/token`.
    pub authority: String,
    pub scope: String,
    /// Token URL with a managed identity: `<imds_endpoint>/metadata/identity/oauth2/token`.
    pub imds_endpoint: String,
    /// A user-assigned identity's client id; empty: the system-assigned identity.
    pub managed_identity_client_id: String,
    pub resource: String,
    pub gzip: bool,
    /// Most bytes of JSON (uncompressed) per request: the service takes 1 MB.
    pub max_request_bytes: usize,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub ca_file: PathBuf,
}

impl Default for AzureLogsSinkConfig {
    fn default() -> Self {
        AzureLogsSinkConfig {
            endpoint: String::new(),
            dcr_immutable_id: String::new(),
            stream_prefix: "Custom-".into(),
            auth: AzureAuth::ClientSecret,
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret_file: PathBuf::new(),
            authority: "https://login.microsoftonline.com".into(),
            scope: "https://monitor.azure.com/.default".into(),
            imds_endpoint: "http://169.254.169.254".into(),
            managed_identity_client_id: String::new(),
            resource: "https://monitor.azure.com".into(),
            gzip: true,
            max_request_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
            ca_file: PathBuf::new(),
        }
    }
}

/// Whether a URL is `https://`, or `http://` to this machine's loopback (test servers).
fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// ClickHouse over its HTTP interface.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickhouseSinkConfig {
    /// Base URL of the HTTP interface.
    pub url: String,
    pub database: String,
    pub user: String,
    /// File holding the password (first line); empty: no password.
    pub password_file: PathBuf,
    pub gzip: bool,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub ca_file: PathBuf,
}

impl Default for ClickhouseSinkConfig {
    fn default() -> Self {
        ClickhouseSinkConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "depmap".into(),
            user: "default".into(),
            password_file: PathBuf::new(),
            gzip: true,
            timeout: Duration::from_secs(30),
            ca_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// Directory of the NDJSON files; empty means `<state_dir>/records`.
    pub dir: PathBuf,
    /// A file is closed and a new one started past this size (bytes); 0 means 64 MiB.
    pub max_file_bytes: u64,
    /// Closed files kept per table, oldest deleted first; 0 means 168 (a week of hours).
    pub max_files: usize,
}

impl FileSinkConfig {
    pub fn dir(&self, state_dir: &Path) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            state_dir.join("records")
        } else {
            self.dir.clone()
        }
    }
}

/// What is wrong with a configuration's text, as one line: where (the line, when the parser
/// knows it), which keys, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default(), keys_prefix(keys))]
pub struct Invalid {
    pub line: Option<usize>,
    pub keys: Vec<String>,
    pub reason: String,
}

/// `key `a`: `, `keys `a` and `b`: `, `keys `a`, `b` and `c`: `, or nothing.
fn keys_prefix(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => format!("key {one}: "),
        [init @ .., last] => format!("keys {} and {last}: ", init.join(", ")),
    }
}

/// An [`Invalid`] naming one key.
fn invalid(key: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        line: None,
        keys: vec![key.to_string()],
        reason: reason.into(),
    }
}

/// An [`Invalid`] naming several keys together.
fn invalid_keys(keys: &[&str], reason: impl Into<String>) -> Invalid {
    Invalid {
        line: None,
        keys: keys.iter().map(|k| (*k).to_string()).collect(),
        reason: reason.into(),
    }
}

/// A configuration that cannot be used, as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {invalid}", path.display())]
    Invalid { path: PathBuf, invalid: Invalid },
}

/// A duration that does not parse or is zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration `{text}` ({reason}); write e.g. 500ms, 10s, 5m, 1h")]
    Syntax { text: String, reason: String },
    #[error("duration `{0}` must be greater than zero")]
    Zero(String),
}

/// Where a loaded configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This file.
    File(PathBuf),
    /// The defaults: no file at the default path.
    Defaults(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults(p) => write!(f, "the defaults (no file at {})", p.display()),
        }
    }
}

impl Config {
    /// Loads `path`, or the defaults when no path was given and the default file is missing.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(path).map(|(c, _)| c)
    }

    /// As [`Config::load`], saying where the configuration came from.
    pub fn load_from(path: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let (file, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Config::default(), Source::Defaults(file)));
            }
            Err(source) => return Err(ConfigError::Read { path: file, source }),
        };
        match Config::parse(&text) {
            Ok(c) => Ok((c, Source::File(file))),
            Err(invalid) => Err(ConfigError::Invalid {
                path: file,
                invalid,
            }),
        }
    }

    /// The directory the configured sink writes to: the file sink's records, or a remote
    /// sink's spool; `None` for stdout.
    pub fn sink_dir(&self) -> Option<(&'static str, PathBuf)> {
        let state = &self.agent.state_dir;
        match self.sink.kind {
            SinkKind::Stdout => None,
            SinkKind::File => Some(("sink.file.dir", self.sink.file.dir(state))),
            kind => Some((
                "sink.delivery.spool_dir",
                self.sink.delivery.spool_dir(state, kind),
            )),
        }
    }

    /// Parses and validates TOML text; the error names the key.
    pub fn parse(text: &str) -> Result<Config, Invalid> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| {
                let upto = text.get(..s.start.min(text.len())).unwrap_or(text);
                upto.matches('\n').count() + 1
            })
        };
        let de = toml::Deserializer::parse(text).map_err(|e| Invalid {
            line: line_of(e.span()),
            keys: Vec::new(),
            reason: one_line(e.message()),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            Invalid {
                line: line_of(inner.span()),
                keys: if key == "." || key.is_empty() {
                    Vec::new()
                } else {
                    vec![key]
                },
                reason: one_line(inner.message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
        let c = &self.collect;
        at_most(&[
            ("collect.window", c.window, Duration::from_secs(86_400)),
            (
                "collect.socket_poll",
                c.socket_poll,
                Duration::from_secs(3_600),
            ),
            (
                "collect.inventory_interval",
                c.inventory_interval,
                Duration::from_secs(7 * 86_400),
            ),
        ])?;
        if c.socket_poll < Duration::from_millis(100) {
            return Err(invalid("collect.socket_poll", "must be at least 100ms"));
        }
        if c.window < c.socket_poll || !c.window.as_nanos().is_multiple_of(c.socket_poll.as_nanos())
        {
            return Err(invalid(
                "collect.window",
                format!(
                    "must be a multiple of collect.socket_poll ({})",
                    humantime::format_duration(c.socket_poll)
                ),
            ));
        }
        if c.hot_poll < Duration::from_millis(50)
            || (c.hot_poll < c.socket_poll
                && !c
                    .socket_poll
                    .as_nanos()
                    .is_multiple_of(c.hot_poll.as_nanos()))
        {
            return Err(invalid(
                "collect.hot_poll",
                format!(
                    "must be at least 50ms and divide collect.socket_poll ({})",
                    humantime::format_duration(c.socket_poll)
                ),
            ));
        }
        if c.max_connections == 0 || c.max_pools == 0 {
            return Err(invalid_keys(
                &["collect.max_connections", "collect.max_pools"],
                "must be at least 1",
            ));
        }
        if c.inventory_interval < Duration::from_secs(1) {
            return Err(invalid("collect.inventory_interval", "must be at least 1s"));
        }
        if self.enrich.dns_cache_bytes < 64 << 10 {
            return Err(invalid(
                "enrich.dns_cache_bytes",
                "must be at least 65536 (64 KiB)",
            ));
        }
        if self.agent.state_dir.as_os_str().is_empty() {
            return Err(invalid("agent.state_dir", "must not be empty"));
        }
        // Relative paths would depend on the directory depmap was started from.
        for (key, path) in [
            ("agent.state_dir", &self.agent.state_dir),
            ("sink.file.dir", &self.sink.file.dir),
            ("sink.delivery.spool_dir", &self.sink.delivery.spool_dir),
        ] {
            if !path.as_os_str().is_empty() && !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!(
                        "`{}` is a relative path; write an absolute one",
                        path.display()
                    ),
                ));
            }
        }
        self.validate_sink()?;
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "`{}` is not an address:port (e.g. 127.0.0.1:9464)",
                    self.metrics.listen
                ),
            ));
        }
        Ok(())
    }

    fn validate_sink(&self) -> Result<(), Invalid> {
        let d = &self.sink.delivery;
        // Upper bounds: a duration past them is a typo, and some (300000000000y) overflow the
        // clock arithmetic of the sender and the shutdown (issue 12: accepted, then panicked).
        let minute = Duration::from_secs(60);
        at_most(&[
            (
                "sink.delivery.spool_max_age",
                d.spool_max_age,
                366 * 24 * 60 * minute,
            ),
            ("sink.delivery.batch_max_age", d.batch_max_age, 60 * minute),
            ("sink.delivery.max_backoff", d.max_backoff, 24 * 60 * minute),
            (
                "sink.delivery.shutdown_grace",
                d.shutdown_grace,
                10 * minute,
            ),
            ("sink.http.timeout", self.sink.http.timeout, 10 * minute),
            (
                "sink.clickhouse.timeout",
                self.sink.clickhouse.timeout,
                10 * minute,
            ),
            (
                "sink.azure_logs.timeout",
                self.sink.azure_logs.timeout,
                10 * minute,
            ),
        ])?;
        for (name, value) in &self.sink.http.headers {
            // RFC 9110: a name is a token; a value has no CR, LF or NUL (they would split or
            // end the request, and every send would fail).
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) {
                return Err(invalid(
                    "sink.http.headers",
                    format!("`{name}` is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
                ));
            }
            if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                return Err(invalid(
                    &format!("sink.http.headers.{name}"),
                    "the value holds a line break or NUL",
                ));
            }
        }
        if d.batch_max_records == 0 || d.batch_max_bytes == 0 {
            return Err(invalid_keys(
                &[
                    "sink.delivery.batch_max_records",
                    "sink.delivery.batch_max_bytes",
                ],
                "must be at least 1",
            ));
        }
        if d.spool_max_bytes < 64 << 10 {
            return Err(invalid(
                "sink.delivery.spool_max_bytes",
                "must be at least 65536 (64 KiB)",
            ));
        }
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        match self.sink.kind {
            SinkKind::Http => {
                let h = &self.sink.http;
                if !url_ok(&h.url) {
                    return Err(invalid(
                        "sink.http.url",
                        "an http:// or https:// URL is required with sink.kind = \"http\"",
                    ));
                }
                if h.split == Split::Mixed && h.url.contains("{table}") {
                    return Err(invalid(
                        "sink.http.url",
                        "`{table}` needs sink.http.split = \"table\"",
                    ));
                }
                if !h.bearer_token_file.as_os_str().is_empty() && !h.bearer_token_env.is_empty() {
                    return Err(invalid_keys(
                        &["sink.http.bearer_token_file", "sink.http.bearer_token_env"],
                        "set one, not both",
                    ));
                }
                if h.client_cert_file.as_os_str().is_empty()
                    != h.client_key_file.as_os_str().is_empty()
                {
                    return Err(invalid_keys(
                        &["sink.http.client_cert_file", "sink.http.client_key_file"],
                        "set both or neither",
                    ));
                }
            }
            SinkKind::Clickhouse => {
                let c = &self.sink.clickhouse;
                if !url_ok(&c.url) {
                    return Err(invalid(
                        "sink.clickhouse.url",
                        "an http:// or https:// URL is required",
                    ));
                }
                if c.database.is_empty()
                    || !c
                        .database
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                {
                    return Err(invalid(
                        "sink.clickhouse.database",
                        "letters, digits and _ only",
                    ));
                }
            }
            SinkKind::AzureLogs => {
                let a = &self.sink.azure_logs;
                if !secure_or_loopback(&a.endpoint) {
                    return Err(invalid(
                        "sink.azure_logs.endpoint",
                        "an https:// URL is required",
                    ));
                }
                if a.dcr_immutable_id.is_empty() {
                    return Err(invalid("sink.azure_logs.dcr_immutable_id", "required"));
                }
                if a.max_request_bytes < 4096 || a.max_request_bytes > 1 << 20 {
                    return Err(invalid(
                        "sink.azure_logs.max_request_bytes",
                        "between 4096 and 1048576 (the service's limit)",
                    ));
                }
                match a.auth {
                    AzureAuth::ClientSecret => {
                        if a.tenant_id.is_empty()
                            || a.client_id.is_empty()
                            || a.client_secret_file.as_os_str().is_empty()
                        {
                            return Err(invalid_keys(
                                &[
                                    "sink.azure_logs.tenant_id",
                                    "client_id",
                                    "client_secret_file",
                                ],
                                "required with auth = \"client_secret\"",
                            ));
                        }
                        if !secure_or_loopback(&a.authority) {
                            return Err(invalid(
                                "sink.azure_logs.authority",
                                "an https:// URL is required",
                            ));
                        }
                    }
                    AzureAuth::ManagedIdentity => {
                        if !a.imds_endpoint.starts_with("http://") {
                            return Err(invalid(
                                "sink.azure_logs.imds_endpoint",
                                "an http:// URL (IMDS does not speak TLS)",
                            ));
                        }
                    }
                }
            }
            SinkKind::File | SinkKind::Stdout => {}
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// The first `(key, value, bound)` whose value is past its bound, as the error.
fn at_most(bounds: &[(&str, Duration, Duration)]) -> Result<(), Invalid> {
    match bounds.iter().find(|(_, value, max)| value > max) {
        Some((key, _, max)) => Err(invalid(
            key,
            format!("at most {}", humantime::format_duration(*max)),
        )),
        None => Ok(()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses a duration like `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| DurationError::Syntax {
        text: s.to_string(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(DurationError::Zero(s.to_string()));
    }
    Ok(d)
}

/// Durations in the file as humantime text. Kept instead of `humantime-serde`: that accepts
/// `0s` (a zero poll or window would spin or divide by zero) and reports humantime's bare
/// error; this one refuses zero and says what to write (`parse_duration`).
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        let c = Config::parse(
            "[collect]\nwindow = \"10s\"\nsocket_poll = \"500ms\"\n[sink]\nkind = \"stdout\"\n",
        )
        .unwrap();
        assert_eq!(c.collect.window, Duration::from_secs(10));
        assert_eq!(c.collect.socket_poll, Duration::from_millis(500));
        assert_eq!(c.sink.kind, SinkKind::Stdout);
        // The effective config round-trips.
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("[collect]\nwindw = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("windw"), "{e}");
        let e = Config::parse("[collect]\nwindow = \"ten seconds\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("collect.window") && e.contains("line 2"), "{e}");
        // Typed: where, which key, why (the callers render it; nothing parses the text back).
        let typed = Config::parse("[collect]\nwindow = \"ten seconds\"\n").unwrap_err();
        assert_eq!(
            (typed.line, typed.keys.clone()),
            (Some(2), vec!["collect.window".to_string()])
        );
        assert!(typed.reason.contains("invalid duration"), "{typed:?}");
        let both = Config::parse("[collect]\nmax_pools = 0\n").unwrap_err();
        assert_eq!(
            both.to_string(),
            "keys `collect.max_connections` and `collect.max_pools`: must be at least 1"
        );
        for bad in ["\"1\"", "\"150%\"", "\"-1%\"", "\"NaN%\"", "1"] {
            let e = Config::parse(&format!("[collect]\ncpu_budget = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("collect.cpu_budget") && !e.contains('\n'), "{e}");
        }
        let c = Config::parse("[collect]\ncpu_budget = \"0.5%\"\n").unwrap();
        assert_eq!(c.collect.cpu_budget.fraction(), 0.005);
        let e = Config::parse("[sink]\nkind = \"kafka\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sink.kind"), "{e}");
        let e = Config::parse("[collect]\nwindow = \"1500ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("collect.window") && e.contains("multiple"),
            "{e}"
        );
        let e = Config::parse("\n[collect\n").unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("line 2"), "{e}");
        let e = Config::parse("[collect]\nhot_poll = \"300ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("collect.hot_poll") && e.contains("divide"),
            "{e}"
        );
        assert!(
            Config::parse("[collect]\nsocket_poll = \"200ms\"\n").is_ok(),
            "hot_poll above socket_poll: off"
        );
        for key in [
            "[agent]\nstate_dir",
            "[sink.file]\ndir",
            "[sink.delivery]\nspool_dir",
        ] {
            let e = Config::parse(&format!("{key} = \"var/lib/depmap\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("relative path"), "{e}");
        }
        for (section, key) in [
            ("sink.delivery", "shutdown_grace"),
            ("sink.delivery", "max_backoff"),
            ("sink.delivery", "spool_max_age"),
            ("sink.delivery", "batch_max_age"),
            ("sink.http", "timeout"),
            ("sink.clickhouse", "timeout"),
            ("sink.azure_logs", "timeout"),
        ] {
            let e = Config::parse(&format!("[{section}]\n{key} = \"300000000000y\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{section}.{key}")), "{e}");
        }
        let e = Config::parse("[collect]\nnamespaces = \"host\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("collect.namespaces") && e.contains("`own` or `all`"),
            "{e}"
        );
        let all = Config::parse("[collect]\nnamespaces = \"all\"\n").unwrap();
        assert_eq!(all.collect.namespaces, NamespacesMode::All);
        let e = Config::parse("[sink.http.headers]\n\"X Bad\" = \"v\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("header name"), "{e}");
        let e = Config::parse("[sink.http.headers]\nX-Ok = \"a\\r\\nInjected: 1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line break"), "{e}");
        assert!(Config::parse("[sink.http.headers]\nX-Tenant = \"blue\"\n").is_ok());
        let e = Config::parse("[collect]\ninventory_interval = \"300000000000y\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("collect.inventory_interval"), "{e}");
        assert!(
            !Config::parse("[agent]\ncomputer = 3\n")
                .unwrap_err()
                .to_string()
                .is_empty()
        );
    }
}
