//! Enrichment: what the records say about the remote end beyond its address. Sources are
//! loaded at start and refreshed when they change; a lookup never does I/O.

pub mod dns;
pub mod geo;
pub mod reverse;
pub mod threat;

use std::net::IpAddr;
use std::path::PathBuf;

use crate::collect::dns_capture::DnsCapture;
use crate::config::EnrichConfig;
use crate::records::VmConnection;
use geo::GeoDb;
use reverse::ReverseLookups;
use threat::{Indicators, Rejected};

pub struct Enricher {
    files: Vec<PathBuf>,
    indicators: Indicators,
    geo_path: Option<PathBuf>,
    geo: Option<GeoDb>,
    dns: Option<DnsCapture>,
    /// Whether DNS capture runs, or why not.
    pub dns_status: Result<(), String>,
    reverse: Option<ReverseLookups>,
}

impl Enricher {
    pub fn new(config: &EnrichConfig) -> Enricher {
        let mut e = Enricher {
            files: config.indicator_files.clone(),
            indicators: Indicators::default(),
            geo_path: (!config.geoip_database.as_os_str().is_empty())
                .then(|| config.geoip_database.clone()),
            geo: None,
            dns: None,
            dns_status: Err("off (enrich.dns_capture = false)".into()),
            reverse: None,
        };
        e.load();
        e.open_geo();
        if config.dns_capture {
            match DnsCapture::start(config.dns_cache_entries) {
                Ok(c) => {
                    e.dns = Some(c);
                    e.dns_status = Ok(());
                }
                Err(err) => {
                    let why = if err.raw_os_error() == Some(libc::EPERM) {
                        "needs CAP_NET_RAW".to_string()
                    } else {
                        err.to_string()
                    };
                    tracing::warn!(error = %why, "passive DNS capture unavailable; falling back to reverse lookups (RemoteDnsQuestions stays null)");
                    e.dns_status = Err(format!("{why}; reverse lookups instead"));
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

    fn load(&mut self) {
        if self.files.is_empty() {
            return;
        }
        let (indicators, rejected) = Indicators::load(&self.files);
        report_rejected(&rejected);
        tracing::info!(
            indicators = indicators.len(),
            skipped_lines = rejected.len(),
            "malicious-IP indicators loaded"
        );
        self.indicators = indicators;
    }

    /// Reloads sources whose files changed (called once per window).
    pub fn refresh(&mut self) {
        if self.indicators.changed() {
            self.load();
        }
        if self.geo.as_ref().is_some_and(GeoDb::changed) {
            self.open_geo();
        }
    }

    /// Fills a connection's enrichment columns from its `RemoteIp`.
    pub fn connection(&self, rec: &mut VmConnection) {
        let Ok(ip) = rec.remote_ip.parse::<IpAddr>() else {
            return;
        };
        if let Some(dns) = &self.dns {
            let cache = dns.cache.lock().unwrap_or_else(|e| e.into_inner());
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
            rec.malicious_ip = Some(rec.remote_ip.clone());
            rec.indicator_threat_type = ind.threat_type.clone();
            rec.description = ind.description.clone();
            rec.tlp_level = ind.tlp_level.clone();
            rec.confidence = ind.confidence.clone();
            rec.severity = ind.severity;
            rec.first_reported_date_time = ind.first_reported.clone();
            rec.last_reported_date_time = ind.last_reported.clone();
            rec.is_active = ind.is_active.clone();
        }
    }
}

/// Each skipped line is worth knowing once per load; the first ten are named.
fn report_rejected(rejected: &[Rejected]) {
    for r in rejected.iter().take(10) {
        tracing::warn!(
            file = %r.file.display(),
            line = r.line,
            reason = %r.reason,
            "indicator line skipped"
        );
    }
    if rejected.len() > 10 {
        tracing::warn!(more = rejected.len() - 10, "more indicator lines skipped");
    }
}
