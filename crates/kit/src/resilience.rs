//! Calling a dependency that may fail or hang: exponential backoff with full jitter between
//! retries, and a circuit breaker that stops calling a dependency that keeps failing.
//!
//! The breaker counts consecutive failures. At the threshold it opens: calls fail at once,
//! without reaching the dependency, for `open_for`. Then one call goes through as a probe
//! (half-open): its success closes the breaker, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delay before retry `n` (0-based): uniform in `[0, min(max, base · 2ⁿ)]` ("full jitter"), so
/// clients that failed together do not retry together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.base.saturating_mul(2u32.saturating_pow(retry.min(31))).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let random = crate::context::random_u128() as u64;
        Duration::from_nanos(random % (nanos + 1))
    }
}

/// What the breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// The call is refused: the breaker is open (or its one probe is already out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    /// When a call may be tried again.
    pub retry_after: Duration,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { consecutive_failures: 0 }),
        }
    }

    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if Instant::now() < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to make one call. The returned attempt must be settled with
    /// [`Attempt::succeeded`] or [`Attempt::failed`]; an attempt dropped unsettled (its caller
    /// was cancelled) frees the probe slot without judging the dependency.
    pub fn attempt(&self) -> Result<Attempt<'_>, CircuitOpen> {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(Attempt { breaker: self, probe: false, settled: false }),
            State::Open { until } if now < until => Err(CircuitOpen { retry_after: until - now }),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(Attempt { breaker: self, probe: true, settled: false })
            }
            State::HalfOpen { probing: true } => Err(CircuitOpen { retry_after: Duration::from_secs(1) }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic while holding the lock cannot leave it torn.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settle(&self, success: bool) {
        let mut state = self.lock();
        *state = match (&*state, success) {
            (_, true) => State::Closed { consecutive_failures: 0 },
            (State::Closed { consecutive_failures }, false) if consecutive_failures + 1 < self.failure_threshold => {
                State::Closed { consecutive_failures: consecutive_failures + 1 }
            }
            (_, false) => State::Open { until: Instant::now() + self.open_for },
        };
    }
}

/// One call let through by a [`CircuitBreaker`].
#[must_use = "settle the attempt with succeeded() or failed()"]
pub struct Attempt<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle(true);
    }

    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle(false);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            let mut state = self.breaker.lock();
            if matches!(*state, State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_within_an_exponential_ceiling() {
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_millis(1000) };
        for retry in 0..8 {
            let ceiling = Duration::from_millis((100u64 << retry).min(1000));
            let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(retry)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Full jitter: delays spread over the range rather than sitting at the ceiling.
            assert!(delays.iter().any(|d| *d < ceiling / 2), "retry {retry}");
            assert!(delays.iter().any(|d| *d > ceiling / 2), "retry {retry}");
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_at_once() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        breaker.attempt().unwrap().failed();
        breaker.attempt().unwrap().failed();
        breaker.attempt().unwrap().succeeded(); // a success resets the count
        breaker.attempt().unwrap().failed();
        breaker.attempt().unwrap().failed();
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.attempt().unwrap().failed();
        assert_eq!(breaker.state(), CircuitState::Open);
        let refused = breaker.attempt().err().unwrap();
        assert!(refused.retry_after > Duration::from_secs(59));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        breaker.attempt().unwrap().failed();
        assert!(breaker.attempt().is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);

        let probe = breaker.attempt().unwrap();
        assert!(breaker.attempt().is_err(), "only one probe at a time");
        probe.failed();
        assert_eq!(breaker.state(), CircuitState::Open);

        std::thread::sleep(Duration::from_millis(30));
        breaker.attempt().unwrap().succeeded();
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.attempt().unwrap().succeeded();
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(10));
        breaker.attempt().unwrap().failed();
        std::thread::sleep(Duration::from_millis(20));
        drop(breaker.attempt().unwrap());
        assert!(breaker.attempt().is_ok(), "a dropped probe must not keep the breaker half-open forever");
    }
}
