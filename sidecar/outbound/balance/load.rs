//! Per-endpoint load: requests in flight and a peak-EWMA latency estimate.
//!
//! The data path calls [`Balancer::start`](super::Balancer::start) when it
//! sends a request and [`RequestLoad::finish`] when the response head is in;
//! load-aware policies read both numbers on every pick. The state sits behind
//! an `Arc` per endpoint so that a balancer rebuilt after a discovery change
//! keeps it, and requests still in flight on the old balancer settle on the
//! same counters.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::config::PeakEwmaConfig;
use crate::sidecar::outbound::retry::Outcome;

/// What became of a request, as far as load balancing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feedback {
    /// The endpoint answered (successfully or with an application error):
    /// its latency is a real measure of how busy it is.
    Responded,
    /// The endpoint shed the request (HTTP 429, gRPC RESOURCE_EXHAUSTED) or
    /// said it cannot serve now (HTTP 503, gRPC UNAVAILABLE): recorded as
    /// the configured penalty latency, not as the (fast) time it took to
    /// refuse, so it does not attract traffic in the meantime.
    Overloaded,
    /// No connection could be made: also recorded as the penalty, so that an
    /// endpoint that refuses instantly does not look like the fastest one.
    Unreachable,
}

impl From<&Outcome> for Feedback {
    fn from(outcome: &Outcome) -> Self {
        match *outcome {
            Outcome::Grpc(tonic::Code::ResourceExhausted | tonic::Code::Unavailable) => Feedback::Overloaded,
            Outcome::Http(http::StatusCode::TOO_MANY_REQUESTS | http::StatusCode::SERVICE_UNAVAILABLE) => {
                Feedback::Overloaded
            }
            Outcome::ConnectFailed => Feedback::Unreachable,
            Outcome::Grpc(_) | Outcome::Http(_) => Feedback::Responded,
        }
    }
}

/// A peak-EWMA round-trip estimate (Finagle, linkerd): a sample above the
/// estimate replaces it at once, lower samples pull it down slowly, and with
/// no samples it decays toward zero so a once-slow endpoint is tried again.
#[derive(Clone, Copy, Debug)]
pub(super) struct RttEstimate {
    rtt_ns: f64,
    at: Instant,
    decay_ns: f64,
}

impl RttEstimate {
    pub(super) fn new(config: &PeakEwmaConfig, now: Instant) -> Self {
        RttEstimate {
            rtt_ns: nanos(config.default_rtt),
            at: now,
            // A zero decay would divide by zero; a nanosecond means "no memory".
            decay_ns: nanos(config.decay).max(1.0),
        }
    }

    /// The estimate at `now`, in nanoseconds.
    pub(super) fn get(&self, now: Instant) -> f64 {
        self.rtt_ns * self.weight_of_past(now)
    }

    pub(super) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = nanos(rtt);
        if rtt > self.rtt_ns {
            // Peak-sensitive: one slow response is enough to steer away.
            self.rtt_ns = rtt;
        } else {
            let past = self.weight_of_past(now);
            self.rtt_ns = self.rtt_ns * past + rtt * (1.0 - past);
        }
        self.at = now;
    }

    fn weight_of_past(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.at));
        (-elapsed / self.decay_ns).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// The load state of one endpoint.
#[derive(Debug)]
pub(super) struct EndpointLoad {
    outstanding: AtomicU32,
    rtt: Mutex<RttEstimate>,
    penalty: Duration,
}

impl EndpointLoad {
    /// `now` is the same for every endpoint of a new set, so that their
    /// default estimates decay in step and tie.
    pub(super) fn new(config: &PeakEwmaConfig, now: Instant) -> Self {
        EndpointLoad {
            outstanding: AtomicU32::new(0),
            rtt: Mutex::new(RttEstimate::new(config, now)),
            penalty: config.penalty,
        }
    }

    pub(super) fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Estimated latency in nanoseconds at `now`.
    pub(super) fn rtt_ns(&self, now: Instant) -> f64 {
        self.rtt.lock().unwrap_or_else(PoisonError::into_inner).get(now)
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        self.rtt.lock().unwrap_or_else(PoisonError::into_inner).observe(rtt, now);
    }
}

/// One request's claim on an endpoint's load: counted as outstanding from
/// [`Balancer::start`](super::Balancer::start) until this is finished or
/// dropped.
#[derive(Debug)]
#[must_use = "dropping it ends the request at once"]
pub struct RequestLoad {
    load: Arc<EndpointLoad>,
    started: Instant,
}

impl RequestLoad {
    pub(super) fn start(load: Arc<EndpointLoad>) -> Self {
        load.outstanding.fetch_add(1, Ordering::Relaxed);
        RequestLoad { load, started: Instant::now() }
    }

    /// The request is over: record its latency (time since start) or the
    /// penalty, depending on `feedback`.
    pub fn finish(self, feedback: Feedback) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(self.started);
        let recorded = match feedback {
            Feedback::Responded => latency,
            Feedback::Overloaded | Feedback::Unreachable => latency.max(self.load.penalty),
        };
        self.load.observe(recorded, now);
    }
}

impl Drop for RequestLoad {
    /// A request dropped without [`RequestLoad::finish`] (cancelled by the
    /// caller) is no longer outstanding, but says nothing about latency.
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn config() -> PeakEwmaConfig {
        PeakEwmaConfig { decay: 10 * SEC, default_rtt: Duration::from_millis(30), penalty: SEC }
    }

    #[tokio::test(start_paused = true)]
    async fn estimate_jumps_to_peaks_and_decays_with_the_time_constant() {
        let t0 = Instant::now();
        let mut e = RttEstimate::new(&config(), t0);
        assert_eq!(e.get(t0), 30e6);
        e.observe(Duration::from_millis(200), t0);
        assert_eq!(e.get(t0), 200e6, "a peak replaces the estimate at once");
        // Idle for one time constant: 1/e of the estimate is left.
        let later = e.get(t0 + 10 * SEC);
        assert!((later - 200e6 / std::f64::consts::E).abs() < 1.0, "{later}");
        // A lower sample one time constant later weighs 1 - 1/e.
        e.observe(Duration::from_millis(20), t0 + 10 * SEC);
        let blended = 200e6 / std::f64::consts::E + 20e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((e.get(t0 + 10 * SEC) - blended).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn frequent_low_samples_pull_a_peak_down_slowly() {
        let t0 = Instant::now();
        let mut e = RttEstimate::new(&config(), t0);
        e.observe(Duration::from_millis(500), t0);
        // 10 samples of 10 ms, 10 ms apart: 100 ms is a hundredth of the
        // time constant, so the estimate stays near the peak.
        for i in 1..=10 {
            e.observe(Duration::from_millis(10), t0 + Duration::from_millis(10 * i));
        }
        let now = t0 + Duration::from_millis(100);
        assert!(e.get(now) > 480e6 && e.get(now) < 500e6, "{}", e.get(now));
    }

    #[tokio::test(start_paused = true)]
    async fn request_load_counts_outstanding_and_penalizes_shedding() {
        let load = Arc::new(EndpointLoad::new(&config(), Instant::now()));
        let a = RequestLoad::start(load.clone());
        let b = RequestLoad::start(load.clone());
        assert_eq!(load.outstanding(), 2);
        tokio::time::advance(Duration::from_millis(5)).await;
        a.finish(Feedback::Overloaded);
        assert_eq!(load.outstanding(), 1);
        assert_eq!(load.rtt_ns(Instant::now()), 1e9, "a fast 429 counts as the 1 s penalty");
        drop(b);
        assert_eq!(load.outstanding(), 0, "a cancelled request is no longer outstanding");
        assert_eq!(load.rtt_ns(Instant::now()), 1e9, "and records no latency");
    }

    #[test]
    fn feedback_from_outcomes() {
        use http::StatusCode;
        assert_eq!(Feedback::from(&Outcome::Grpc(tonic::Code::ResourceExhausted)), Feedback::Overloaded);
        assert_eq!(Feedback::from(&Outcome::Http(StatusCode::TOO_MANY_REQUESTS)), Feedback::Overloaded);
        assert_eq!(Feedback::from(&Outcome::ConnectFailed), Feedback::Unreachable);
        assert_eq!(Feedback::from(&Outcome::Grpc(tonic::Code::Unavailable)), Feedback::Overloaded);
        assert_eq!(Feedback::from(&Outcome::Http(StatusCode::SERVICE_UNAVAILABLE)), Feedback::Overloaded);
        assert_eq!(Feedback::from(&Outcome::Grpc(tonic::Code::Internal)), Feedback::Responded);
        assert_eq!(Feedback::from(&Outcome::Grpc(tonic::Code::Ok)), Feedback::Responded);
        assert_eq!(Feedback::from(&Outcome::Http(StatusCode::BAD_GATEWAY)), Feedback::Responded);
    }
}
