//! Enrichment: what the records say about the remote end beyond its address. Sources are
//! loaded at start and refreshed when they change; a lookup never does I/O.

pub mod dns;
pub mod geo;
pub mod reverse;
pub mod threat;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use crate::collect::dns_capture::DnsCapture;
use crate::collect::sources::Availability;
use crate::config::EnrichConfig;
use crate::records::VmConnection;
use dns::{DnsCache, DnsCounters};
use geo::GeoDb;
use reverse::ReverseLookups;
use threat::{Indicators, Rejections};

/// The DNS capture's counters, for the self-metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsReport {
    pub counters: DnsCounters,
    /// Packets that were not DNS messages.
    pub unparsable: u64,
    /// Packets the kernel dropped: the reader fell behind.
    pub dropped: u64,
    pub cache_bytes: u64,
}

pub struct Enricher {
    files: Vec<PathBuf>,
    max_indicators: usize,
    indicators: Indicators,
    /// A reload of the indicator files in progress, on a thread of its own (a 200 MB file
    /// took 7 s: issue 12); its result replaces `indicators` when it lands.
    loading: Option<Receiver<(Indicators, Rejections)>>,
    geo_path: Option<PathBuf>,
    geo: Option<GeoDb>,
    /// The capture (kept running while it lives) and the cache it fills.
    dns: Option<(DnsCapture, Arc<Mutex<DnsCache>>)>,
    /// Whether DNS capture runs, or why not.
    pub dns_status: Availability,
    reverse: Option<ReverseLookups>,
}

impl Enricher {
    /// The sources of `config`, the indicator files loaded before it returns (at start: the
    /// first records have them).
    pub fn new(config: &EnrichConfig) -> Enricher {
        let mut e = Enricher::build(config);
        e.load();
        e
    }

    /// A reload's settings: the other sources are rebuilt now (they open quickly); the
    /// indicator files load on a thread while the loaded indicators go on serving (a reload
    /// naming a 200 MB feed stopped the poll loop for the whole load: issue 12).
    pub fn reconfigure(&mut self, config: &EnrichConfig) {
        let mut fresh = Enricher::build(config);
        fresh.indicators = std::mem::take(&mut self.indicators);
        fresh.start_load();
        *self = fresh;
    }

    fn build(config: &EnrichConfig) -> Enricher {
        let mut e = Enricher {
            files: config.indicator_files.clone(),
            max_indicators: config.max_indicators,
            indicators: Indicators::default(),
            loading: None,
            geo_path: (!config.geoip_database.as_os_str().is_empty())
                .then(|| config.geoip_database.clone()),
            geo: None,
            dns: None,
            dns_status: Availability::Unavailable("off (enrich.dns_capture = false)".into()),
            reverse: None,
        };
        e.open_geo();
        if config.dns_capture {
            let (cache, on_message) = dns::shared(config.dns_cache_entries, config.dns_cache_bytes);
            match DnsCapture::start(on_message) {
                Ok(c) => {
                    e.dns = Some((c, cache));
                    e.dns_status = Availability::YES;
                }
                Err(err) => {
                    let why = if err.raw_os_error() == Some(libc::EPERM) {
                        "needs CAP_NET_RAW".to_string()
                    } else {
                        err.to_string()
                    };
                    tracing::warn!(error = %why, "passive DNS capture unavailable; falling back to reverse lookups (RemoteDnsQuestions stays null)");
                    e.dns_status =
                        Availability::Unavailable(format!("{why}; reverse lookups instead"));
                }
            }
        }
        // Reverse lookups: asked for, or the fallback of a capture that cannot run.
        if config.reverse_lookups || (config.dns_capture && e.dns.is_none()) {
            match ReverseLookups::start(config.reverse_lookups_per_second, config.dns_cache_entries)
            {
                Ok(r) => e.reverse = Some(r),
                Err(err) => tracing::warn!(error = %err, "reverse lookups unavailable"),
            }
        }
        e
    }

    fn open_geo(&mut self) {
        let Some(path) = &self.geo_path else { return };
        match GeoDb::open(path) {
            Ok(db) => {
                tracing::info!(database = %path.display(), "geolocation database opened");
                self.geo = Some(db);
            }
            Err(e) => {
                // Kept: the previous database (if any) still answers.
                tracing::warn!(error = %e, "geolocation database unusable; RemoteCountry/Latitude/Longitude stay null");
            }
        }
    }

    /// The first load, before the first records: at start-up, on the caller's thread.
    fn load(&mut self) {
        if self.files.is_empty() {
            return;
        }
        let (indicators, rejected) = Indicators::load(&self.files, self.max_indicators);
        self.take(indicators, &rejected);
    }

    fn take(&mut self, indicators: Indicators, rejected: &Rejections) {
        report_rejected(rejected, self.max_indicators);
        tracing::info!(
            indicators = indicators.len(),
            skipped_lines = rejected.skipped,
            over_max_indicators = rejected.over_cap,
            "malicious-IP indicators loaded"
        );
        self.indicators = indicators;
    }

    /// Loads the indicator files on a thread; [`Enricher::refresh`] takes the result.
    fn start_load(&mut self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (files, max) = (self.files.clone(), self.max_indicators);
        let spawned = std::thread::Builder::new()
            .name("indicators".into())
            .spawn(move || {
                let _ = tx.send(Indicators::load(&files, max));
            });
        match spawned {
            Ok(_) => self.loading = Some(rx),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot start the indicator reload; trying again next window"
            ),
        }
    }

    /// Reloads sources whose files changed (called once per window). Indicator files load
    /// on a thread; the records use the previous ones until the new ones are ready.
    pub fn refresh(&mut self) {
        if let Some(rx) = &self.loading {
            match rx.try_recv() {
                Ok((indicators, rejected)) => {
                    self.loading = None;
                    self.take(indicators, &rejected);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.loading = None;
                    tracing::error!(
                        "the indicator reload ended without a result; keeping the loaded ones"
                    );
                }
            }
        }
        if self.loading.is_none() && self.indicators.changed() {
            self.start_load();
        }
        if self.geo.as_ref().is_some_and(GeoDb::changed) {
            self.open_geo();
        }
    }

    /// What the DNS capture counted (zeros when it is off).
    pub fn dns_report(&self) -> DnsReport {
        let Some((capture, cache)) = &self.dns else {
            return DnsReport::default();
        };
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        DnsReport {
            counters: cache.counters,
            unparsable: load(&capture.stats.unparsable),
            dropped: load(&capture.stats.dropped),
            cache_bytes: cache.bytes() as u64,
        }
    }

    /// Fills a connection's enrichment columns from its `RemoteIp`.
    pub fn connection(&self, rec: &mut VmConnection) {
        let ip = rec.remote_ip.0;
        if let Some((_, cache)) = &self.dns {
            let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(names) = cache.get(ip, std::time::Instant::now()) {
                rec.remote_dns_questions = serde_json::to_string(&names.questions).ok();
                rec.remote_dns_canonical_names = (!names.canonical_names.is_empty())
                    .then(|| serde_json::to_string(&names.canonical_names).ok())
                    .flatten();
            }
        }
        // A name from a reverse lookup is the address's canonical name; no question was seen.
        if rec.remote_dns_canonical_names.is_none()
            && rec.remote_dns_questions.is_none()
            && let Some(name) = self.reverse.as_ref().and_then(|r| r.name(ip))
        {
            rec.remote_dns_canonical_names = serde_json::to_string(&[name]).ok();
        }
        if let Some(place) = self.geo.as_ref().and_then(|g| g.lookup(ip)) {
            rec.remote_country = place.country;
            rec.remote_latitude = place.latitude;
            rec.remote_longitude = place.longitude;
        }
        if let Some(ind) = self.indicators.lookup(ip) {
            rec.malicious_ip = Some(rec.remote_ip);
            let text = |t: &Option<Arc<str>>| t.as_deref().map(str::to_owned);
            rec.indicator_threat_type = text(&ind.threat_type);
            rec.description = text(&ind.description);
            rec.tlp_level = text(&ind.tlp_level);
            rec.confidence = text(&ind.confidence);
            rec.severity = ind.severity;
            rec.first_reported_date_time = text(&ind.first_reported);
            rec.last_reported_date_time = text(&ind.last_reported);
            rec.is_active = text(&ind.is_active);
        }
    }
}

/// Each skipped line is worth knowing once per load; the first ten are named.
fn report_rejected(rejected: &Rejections, max: usize) {
    for r in &rejected.named {
        tracing::warn!(
            file = %r.file.display(),
            line = r.line,
            reason = %r.reason,
            "indicator line skipped"
        );
    }
    if rejected.skipped > rejected.named.len() {
        tracing::warn!(
            more = rejected.skipped - rejected.named.len(),
            "more indicator lines skipped"
        );
    }
    if rejected.over_cap > 0 {
        tracing::warn!(
            not_loaded = rejected.over_cap,
            max_indicators = max,
            "indicators beyond enrich.max_indicators not loaded"
        );
    }
}
