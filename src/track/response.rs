//! Response time from polled `tcp_info` (SPEC §5; research §4).
//!
//! Definition (Microsoft): the time between the last byte of a request leaving and the last
//! byte of the response arriving. `tcp_info` carries, per socket, the milliseconds since the
//! last data segment was sent (`last_data_sent`) and received (`last_data_recv`); both come
//! from one kernel clock in one message, so their difference is exact to one jiffy (4 ms at
//! HZ=250) however long the poll takes. The *request* is what the connecting side sends and
//! the *response* what it receives; on an accepted (inbound) socket the roles swap, so
//! inbound records measure the local server's time (request in → response out) and outbound
//! records what the client waited.
//!
//! Estimators, applied to each snapshot of a socket (full dump, hot lookup, destroy final):
//! * **A — idle snapshot**: the last response event came after the last request event and the
//!   response counter grew since the last measurement: `RT = since_request − since_response`.
//!   Exact to a jiffy; measures the last exchange before the snapshot.
//! * **B — in-flight pairing**: the previous snapshot saw a request in flight (last event was a
//!   request; equal timestamps count as in flight, never as RT = 0) sent at absolute time T0;
//!   now a response has arrived (response counter grew) and at most one new request segment
//!   went out: `RT = T_response − T0`, error ± the snapshot skew.
//! * **C — busy connections**: a connection in flight at two snapshots in a row whose current
//!   request followed the previous response within a jiffy both times (back-to-back traffic
//!   is never idle at a poll, so A and B never fire) and that completed n ≥ 2 requests in
//!   between: n samples of `interval / n`. Only used where A and B cannot be.
//!
//! `Responses` counts the exchanges measured; nothing is invented for the rest. The heuristic
//! assumes request/response protocols: multiplexed (HTTP/2, gRPC), pipelined, streaming and
//! server-first protocols (SMTP greeting) give meaningless or no values.

use crate::collect::sockdiag::TcpCounters;

/// One jiffy at HZ=250, the coarsest kernel clock in use: `tcp_info` times are this exact.
pub const JIFFY_MS: u64 = 4;

/// Sums of measured response times, in microseconds (the kernel events measure to the
/// microsecond; the tcp_info estimators to the millisecond). Records carry milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtStats {
    pub responses: u64,
    pub sum_us: u64,
    pub min_us: u64,
    pub max_us: u64,
}

impl RtStats {
    /// `count` exchanges of `rt_ms` milliseconds each (an estimator's measurement).
    pub fn record(&mut self, rt_ms: u64, count: u64) {
        self.record_us(rt_ms.saturating_mul(1000), count);
    }

    /// `count` exchanges of `rt_us` microseconds each.
    pub fn record_us(&mut self, rt_us: u64, count: u64) {
        if count == 0 {
            return;
        }
        if self.responses == 0 {
            self.min_us = rt_us;
            self.max_us = rt_us;
        } else {
            self.min_us = self.min_us.min(rt_us);
            self.max_us = self.max_us.max(rt_us);
        }
        self.responses += count;
        self.sum_us = self.sum_us.saturating_add(rt_us.saturating_mul(count));
    }

    pub fn add(&mut self, o: &RtStats) {
        if o.responses == 0 {
            return;
        }
        if self.responses == 0 {
            *self = *o;
            return;
        }
        self.responses += o.responses;
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
        self.min_us = self.min_us.min(o.min_us);
        self.max_us = self.max_us.max(o.max_us);
    }
}

/// The counters of one snapshot seen from the connection's request/response roles.
#[derive(Debug, Clone, Copy)]
struct View {
    /// Milliseconds since the last request byte / response byte moved.
    since_request: u64,
    since_response: u64,
    request_segs: u32,
    response_bytes: u64,
}

fn view(c: &TcpCounters, client: bool) -> View {
    if client {
        View {
            since_request: u64::from(c.last_data_sent_ms),
            since_response: u64::from(c.last_data_recv_ms),
            request_segs: c.data_segs_out,
            response_bytes: c.bytes_received,
        }
    } else {
        View {
            since_request: u64::from(c.last_data_recv_ms),
            since_response: u64::from(c.last_data_sent_ms),
            request_segs: c.data_segs_in,
            response_bytes: c.bytes_sent.saturating_sub(c.bytes_retrans),
        }
    }
}

/// Per-socket estimator state: the previous snapshot.
#[derive(Debug, Clone, Default)]
pub struct RtEstimator {
    prev: Option<Prev>,
    /// Response counter at the last measured exchange (so one exchange is measured once).
    measured_response_bytes: u64,
    /// When that exchange's last response byte arrived (absolute, ms).
    measured_response_at: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Prev {
    at_ms: u64,
    request_segs: u32,
    response_bytes: u64,
    /// Absolute time the in-flight request left, if one was in flight.
    in_flight_since: Option<u64>,
    /// The in-flight request followed the previous response within a jiffy.
    back_to_back: bool,
}

impl RtEstimator {
    /// The first snapshot of a socket depmap found already open: its past exchanges are not
    /// measured.
    pub fn baseline(at_ms: u64, c: &TcpCounters, client: bool) -> RtEstimator {
        let mut e = RtEstimator::default();
        let v = view(c, client);
        e.measured_response_bytes = v.response_bytes;
        e.measured_response_at = Some(at_ms.saturating_sub(v.since_response));
        e.prev = Some(prev_of(at_ms, &v));
        e
    }

    /// Whether the snapshot shows a response not measured yet. The peer's FIN adds one byte
    /// to a client's `bytes_received` without moving `last_data_recv`: one byte more with no
    /// later data is the close, not a new response (it was counted twice: FIDELITY's
    /// one-shot scenario failed "more responses than exchanges" now and then).
    fn is_new_response(&self, at_ms: u64, v: &View) -> bool {
        let grew = v
            .response_bytes
            .saturating_sub(self.measured_response_bytes);
        let later = self
            .measured_response_at
            .is_none_or(|then| at_ms.saturating_sub(v.since_response) > then + JIFFY_MS);
        grew > 1 || (grew == 1 && later)
    }

    fn measured(&mut self, at_ms: u64, v: &View) {
        self.measured_response_bytes = v.response_bytes;
        self.measured_response_at = Some(at_ms.saturating_sub(v.since_response));
    }

    /// Feeds one snapshot taken at `at_ms` (a monotonic clock, milliseconds) and records the
    /// exchanges it measures into `out`.
    pub fn observe(&mut self, at_ms: u64, c: &TcpCounters, client: bool, out: &mut RtStats) {
        let v = view(c, client);
        let idle = v.since_response < v.since_request;
        let new_response = self.is_new_response(at_ms, &v);
        if idle && new_response && v.request_segs > 0 {
            // A: the last exchange is complete.
            out.record(v.since_request - v.since_response, 1);
            self.measured(at_ms, &v);
        } else if !idle
            && let Some(p) = self.prev
            && v.response_bytes > p.response_bytes
            && new_response
        {
            let new_requests = v.request_segs.saturating_sub(p.request_segs);
            let response_at = at_ms.saturating_sub(v.since_response);
            match p.in_flight_since {
                // B: the request in flight last time got its response, then (at most) one
                // new request left.
                Some(sent) if new_requests <= 1 && response_at > sent => {
                    out.record(response_at - sent, 1);
                    self.measured(at_ms, &v);
                }
                // C: back-to-back at both snapshots, several exchanges in between.
                Some(_)
                    if p.back_to_back
                        && v.since_response.saturating_sub(v.since_request) <= JIFFY_MS
                        && new_requests >= 2 =>
                {
                    let interval = at_ms.saturating_sub(p.at_ms);
                    out.record(interval / u64::from(new_requests), u64::from(new_requests));
                    self.measured(at_ms, &v);
                }
                _ => {}
            }
        }
        self.prev = Some(prev_of(at_ms, &v));
    }
}

fn prev_of(at_ms: u64, v: &View) -> Prev {
    let in_flight = v.request_segs > 0 && v.since_response >= v.since_request;
    Prev {
        at_ms,
        request_segs: v.request_segs,
        response_bytes: v.response_bytes,
        in_flight_since: in_flight.then(|| at_ms.saturating_sub(v.since_request)),
        back_to_back: in_flight && v.since_response - v.since_request <= JIFFY_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client socket: `sent`/`recv` are ms since the last data segment out/in.
    fn client(sent_ago: u32, recv_ago: u32, segs_out: u32, bytes_in: u64) -> TcpCounters {
        TcpCounters {
            last_data_sent_ms: sent_ago,
            last_data_recv_ms: recv_ago,
            data_segs_out: segs_out,
            bytes_received: bytes_in,
            ..Default::default()
        }
    }

    #[test]
    fn idle_snapshot_measures_the_last_exchange_once() {
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        // Request left 300 ms ago, response arrived 180 ms ago: 120 ms.
        e.observe(1_000, &client(300, 180, 1, 2000), true, &mut s);
        // Same exchange seen again a second later: not measured twice.
        e.observe(2_000, &client(1300, 1180, 1, 2000), true, &mut s);
        assert_eq!(
            s,
            RtStats {
                responses: 1,
                sum_us: 120000,
                min_us: 120000,
                max_us: 120000
            }
        );
    }

    #[test]
    fn the_peers_fin_at_close_is_not_a_second_response() {
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        // Response complete at 880 (request left at 700): measured once.
        e.observe(1_000, &client(300, 120, 1, 2000), true, &mut s);
        // The destroy final: the peer's FIN made bytes_received 2001; no later data.
        e.observe(1_050, &client(350, 170, 1, 2001), true, &mut s);
        assert_eq!(s.responses, 1, "{s:?}");
        // A real one-byte response later on is still measured.
        e.observe(3_000, &client(400, 100, 2, 2002), true, &mut s);
        assert_eq!(s.responses, 2, "{s:?}");
    }

    #[test]
    fn equal_timestamps_are_in_flight_not_zero() {
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        e.observe(1_000, &client(40, 40, 1, 2000), true, &mut s);
        assert_eq!(s.responses, 0);
    }

    #[test]
    fn in_flight_pairing_measures_across_two_snapshots() {
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        // Poll 1: request 1 left 50 ms ago (at 950), nothing back yet (previous response 400
        // ms ago).
        e.observe(1_000, &client(50, 400, 1, 0), true, &mut s);
        assert_eq!(s.responses, 0);
        // Poll 2: the response arrived at 1,070 and request 2 left at 1,100 (in flight again).
        e.observe(2_000, &client(900, 930, 2, 2000), true, &mut s);
        assert_eq!(
            s,
            RtStats {
                responses: 1,
                sum_us: 120000,
                min_us: 120000,
                max_us: 120000
            }
        );
    }

    #[test]
    fn back_to_back_traffic_uses_the_busy_estimate_and_nothing_else_is_invented() {
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        // Always in flight, each request sent in the jiffy its predecessor's response came.
        e.observe(1_000, &client(30, 30, 10, 20_000), true, &mut s);
        e.observe(2_000, &client(70, 74, 18, 36_000), true, &mut s);
        assert_eq!(
            s,
            RtStats {
                responses: 8,
                sum_us: 1000000,
                min_us: 125000,
                max_us: 125000
            }
        );
        // Think time between exchanges (not back-to-back) and several exchanges between
        // polls, in flight at both: no value.
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        e.observe(1_000, &client(30, 200, 10, 20_000), true, &mut s);
        e.observe(2_000, &client(20, 300, 14, 28_000), true, &mut s);
        assert_eq!(s.responses, 0);
    }

    #[test]
    fn server_side_measures_request_in_to_response_out() {
        let mut e = RtEstimator::default();
        let mut s = RtStats::default();
        let server = TcpCounters {
            last_data_recv_ms: 500, // request arrived 500 ms ago
            last_data_sent_ms: 480, // response left 20 ms after it
            data_segs_in: 1,
            bytes_sent: 1000,
            ..Default::default()
        };
        e.observe(1_000, &server, false, &mut s);
        assert_eq!((s.responses, s.sum_us), (1, 20000));
    }

    #[test]
    fn a_baseline_socket_is_not_measured_for_its_past() {
        let mut s = RtStats::default();
        let mut e = RtEstimator::baseline(1_000, &client(300, 180, 1, 2000), true);
        e.observe(2_000, &client(1300, 1180, 1, 2000), true, &mut s);
        assert_eq!(s.responses, 0);
        e.observe(3_000, &client(100, 40, 2, 4000), true, &mut s);
        assert_eq!((s.responses, s.sum_us), (1, 60000));
    }

    #[test]
    fn stats_merge() {
        let mut a = RtStats::default();
        a.record(10, 1);
        let mut b = RtStats::default();
        b.record(30, 2);
        a.add(&b);
        a.add(&RtStats::default());
        assert_eq!(
            a,
            RtStats {
                responses: 3,
                sum_us: 70000,
                min_us: 10000,
                max_us: 30000
            }
        );
    }
}
