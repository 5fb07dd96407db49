//! Geolocation of remote addresses (`RemoteCountry`, `RemoteLatitude`, `RemoteLongitude`) from
//! a MaxMind-format database (`.mmdb`: GeoLite2/GeoIP2 City or Country, or any database with
//! the same `country` and `location` fields) named by `enrich.geoip_database`, read with the
//! maxminddb crate and opened again when the file changes. `RemoteCountry` is the country's
//! English name, else its ISO code.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Entry {
    country: Option<Country>,
    location: Option<Location>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Country {
    iso_code: Option<String>,
    names: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Place {
    pub country: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// A geolocation database that does not open.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct GeoError {
    pub path: PathBuf,
    pub source: maxminddb::MaxMindDbError,
}

pub struct GeoDb {
    path: PathBuf,
    opened: Option<SystemTime>,
    reader: maxminddb::Reader<Vec<u8>>,
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|source| GeoError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(GeoDb {
            path: path.to_path_buf(),
            opened: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
            reader,
        })
    }

    /// Whether the file changed since it was opened.
    pub fn changed(&self) -> bool {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            != self.opened
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<Place> {
        let entry: Entry = self.reader.lookup(ip).ok()?.decode().ok()??;
        let country = entry
            .country
            .and_then(|c| c.names.get("en").cloned().or(c.iso_code));
        let (latitude, longitude) = entry
            .location
            .map_or((None, None), |l| (l.latitude, l.longitude));
        let place = Place {
            country,
            latitude,
            longitude,
        };
        (place != Place::default()).then_some(place)
    }
}
