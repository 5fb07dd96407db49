//! Reverse (PTR) lookups of remote addresses that no captured DNS answer named, through the
//! system's resolvers (`/etc/resolv.conf`, hickory-resolver). Off by default (they send DNS
//! queries); on with `enrich.reverse_lookups`, or as the fallback when DNS capture was asked
//! for but CAP_NET_RAW is missing. Lookups run on a thread of their own, at most
//! `per_second` a second (the rest wait in a bounded queue; beyond it requests are dropped and
//! asked again later), each with a 2 s timeout. Answers are cached for their TTL (at least 5
//! minutes); failures and empty answers are cached for 10 minutes (negative cache), so an
//! address is asked at most once per period. A lookup never blocks a poll: a name found
//! appears from the next window on.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc::{Receiver, Sender, channel};

const NEGATIVE_TTL: Duration = Duration::from_secs(600);
const MIN_TTL: Duration = Duration::from_secs(300);
const QUEUE: usize = 1024;

/// Per address: the name (None: none found) and until when the entry holds.
type Cache = HashMap<IpAddr, (Option<String>, Instant)>;

pub struct ReverseLookups {
    queue: Sender<IpAddr>,
    cache: Arc<Mutex<Cache>>,
    max_entries: usize,
}

impl ReverseLookups {
    pub fn start(per_second: u32, max_entries: usize) -> io::Result<ReverseLookups> {
        let (queue, requests) = channel(QUEUE);
        let cache = Arc::new(Mutex::new(Cache::new()));
        let shared = cache.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let resolver = TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| io::Error::other(format!("resolver configuration: {e}")))?;
        std::thread::Builder::new()
            .name("reverse-dns".into())
            .spawn(move || {
                runtime.block_on(lookups(resolver, requests, shared, per_second.max(1)));
            })?;
        Ok(ReverseLookups {
            queue,
            cache,
            max_entries,
        })
    }

    /// The cached name of `ip`; if none is cached, the address is queued for a lookup.
    pub fn name(&self, ip: IpAddr) -> Option<String> {
        let now = Instant::now();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((name, until)) = cache.get(&ip)
                && *until > now
            {
                return name.clone();
            }
            if cache.len() >= self.max_entries {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= self.max_entries {
                    return None;
                }
            }
            // Marked as asked (a short negative entry) so it is queued once.
            cache.insert(ip, (None, now + Duration::from_secs(30)));
        }
        // A full queue drops the request: asked again once the mark expires.
        let _ = self.queue.try_send(ip);
        None
    }
}

async fn lookups(
    resolver: TokioResolver,
    mut requests: Receiver<IpAddr>,
    cache: Arc<Mutex<Cache>>,
    per_second: u32,
) {
    let gap = Duration::from_secs(1) / per_second;
    loop {
        let Some(ip) = requests.recv().await else {
            return;
        };
        let started = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(2), resolver.reverse_lookup(ip)).await;
        let (name, until) = match answer {
            Ok(Ok(lookup)) => {
                let name = lookup.answers().iter().find_map(|r| match &r.data {
                    RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_lowercase()),
                    _ => None,
                });
                let until = lookup.valid_until().max(Instant::now() + MIN_TTL);
                match name {
                    Some(n) => (Some(n), until),
                    None => (None, Instant::now() + NEGATIVE_TTL),
                }
            }
            _ => (None, Instant::now() + NEGATIVE_TTL),
        };
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, (name, until));
        // At most `per_second` lookups a second.
        if let Some(rest) = gap.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}
