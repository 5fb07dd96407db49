//! Window arithmetic: windows are aligned to multiples of their length since the Unix epoch,
//! so every agent's minute starts at the same instant and records from many hosts line up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Start of the aligned window of length `len` that contains `t`.
pub fn window_start(t: SystemTime, len: Duration) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let len_ns = len.as_nanos().max(1);
    let start_ns = since.as_nanos() / len_ns * len_ns;
    UNIX_EPOCH + Duration::from_nanos(start_ns as u64)
}

/// The next instant after `t` that is a multiple of `period` since the epoch.
pub fn next_tick(t: SystemTime, period: Duration) -> SystemTime {
    window_start(t, period) + period
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn windows_align_to_epoch_multiples() {
        let minute = Duration::from_secs(60);
        assert_eq!(window_start(at(120_000), minute), at(120_000));
        assert_eq!(window_start(at(179_999), minute), at(120_000));
        assert_eq!(window_start(at(180_000), minute), at(180_000));
        assert_eq!(next_tick(at(180_000), minute), at(240_000));
        assert_eq!(next_tick(at(180_001), Duration::from_secs(1)), at(181_000));
    }
}
