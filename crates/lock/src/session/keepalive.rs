//! The keep-alive schedule of a session's lease, sans-IO: fed the current time and the server's answers, it says
//! when to send a keep-alive and when the lease must be considered lost.
//!
//! The lease is judged from the client's side, conservatively: a keep-alive sent at `t` and acknowledged with a
//! TTL of `ttl` proves the server keeps the lease until at least `t + ttl` (the server renewed it after `t`).
//! The machine declares the session lost at that instant unless a later keep-alive was acknowledged, so a lock
//! holder stops before the server can have handed the lock to someone else (given clocks that run at the same
//! rate; see the crate's safety notes).

use std::time::Duration;

use tokio::time::Instant;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// No keep-alive was acknowledged in time: the server may have expired the lease.
    Expired,
    /// The server answered that the lease does not exist (expired or revoked there).
    NotFound,
    /// The session was closed or dropped by its owner.
    Closed,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Expired => "no keep-alive acknowledged before the TTL ran out",
            Self::NotFound => "the server no longer knows the lease",
            Self::Closed => "the session was closed",
        })
    }
}

/// What the driver must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAliveAction {
    /// Send one keep-alive request now (and report its answer with [`KeepAliveSchedule::on_ack`]).
    Send,
    /// The outstanding keep-alive got no answer for too long: drop the stream, open a new one and send again.
    Reconnect,
    /// Nothing to do until [`KeepAliveSchedule::next_wakeup`].
    Wait,
    /// The session is lost; stop.
    Lost(LossReason),
}

/// The keep-alive state machine of one lease.
#[derive(Clone, Debug)]
pub struct KeepAliveSchedule {
    interval: Duration,
    retry: Duration,
    /// Until when the lease is known to live.
    deadline: Instant,
    next_send: Instant,
    /// When the unanswered keep-alive was sent.
    in_flight: Option<Instant>,
    lost: Option<LossReason>,
}

impl KeepAliveSchedule {
    /// A schedule for a lease granted with `ttl`, whose grant request was sent at `granted_at`. Keep-alives
    /// go out every third of the TTL, so two can be lost before the lease is in danger.
    pub fn new(granted_at: Instant, ttl: Duration) -> Self {
        let interval = (ttl / 3).max(Duration::from_millis(100));
        Self {
            interval,
            retry: (interval / 4).max(Duration::from_millis(50)),
            deadline: granted_at + ttl,
            next_send: granted_at + interval,
            in_flight: None,
            lost: None,
        }
    }

    /// Until when the lease is known to be alive on the server.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the session is lost, and why.
    pub fn lost(&self) -> Option<LossReason> {
        self.lost
    }

    /// What to do at `now`. A `Send` or `Reconnect` marks a keep-alive as outstanding from `now`.
    pub fn poll(&mut self, now: Instant) -> KeepAliveAction {
        if let Some(reason) = self.lost {
            return KeepAliveAction::Lost(reason);
        }
        if now >= self.deadline {
            self.lost = Some(LossReason::Expired);
            return KeepAliveAction::Lost(LossReason::Expired);
        }
        match self.in_flight {
            Some(sent) if now >= sent + self.interval => {
                self.in_flight = Some(now);
                KeepAliveAction::Reconnect
            }
            Some(_) => KeepAliveAction::Wait,
            None if now >= self.next_send => {
                self.in_flight = Some(now);
                KeepAliveAction::Send
            }
            None => KeepAliveAction::Wait,
        }
    }

    /// When [`poll`](Self::poll) next has something to do (absent any answer).
    pub fn next_wakeup(&self) -> Instant {
        let act_at = match self.in_flight {
            Some(sent) => sent + self.interval,
            None => self.next_send,
        };
        act_at.min(self.deadline)
    }

    /// The server acknowledged the outstanding keep-alive with `ttl_secs` (0 or less: the lease is gone).
    pub fn on_ack(&mut self, now: Instant, ttl_secs: i64) {
        if self.lost.is_some() {
            return;
        }
        let Some(sent) = self.in_flight.take() else {
            // An answer to a request we no longer track (sent on a stream since replaced); it proves nothing
            // about when the server saw it relative to our clock, so it does not extend the deadline.
            return;
        };
        if ttl_secs <= 0 {
            self.lost = Some(LossReason::NotFound);
            return;
        }
        let ttl = Duration::from_secs(ttl_secs.unsigned_abs());
        self.deadline = self.deadline.max(sent + ttl);
        self.next_send = now + self.interval;
    }

    /// Sending failed or the stream broke: try again soon (the deadline does not move).
    pub fn on_error(&mut self, now: Instant) {
        if self.lost.is_none() {
            self.in_flight = None;
            self.next_send = now + self.retry;
        }
    }

    /// The owner closed the session.
    pub fn close(&mut self) {
        self.lost.get_or_insert(LossReason::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Event {
        Advance(u64),
        Ack { delay_ms: u64, ttl: i64 },
        Error,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (1u64..4_000).prop_map(Event::Advance),
            4 => (0u64..3_000, prop_oneof![9 => Just(5i64), 1 => Just(0i64)])
                .prop_map(|(delay_ms, ttl)| Event::Ack { delay_ms, ttl }),
            1 => Just(Event::Error),
        ]
    }

    proptest! {
        // Seeds are printed on failure; replay with PROPTEST_RNG_SEED.
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The session is never believed alive past the instant the server is guaranteed to keep the lease:
        /// the latest (send time + TTL) over acknowledged keep-alives (and the grant). Once lost, it stays lost.
        #[test]
        fn never_alive_past_the_servers_guarantee(events in proptest::collection::vec(event(), 1..80)) {
            let start = Instant::now();
            let ttl = Duration::from_secs(5);
            let mut machine = KeepAliveSchedule::new(start, ttl);
            let mut guaranteed = start + ttl;
            let mut now = start;
            let mut was_lost = false;
            for event in events {
                match machine.poll(now) {
                    KeepAliveAction::Lost(_) => was_lost = true,
                    KeepAliveAction::Send | KeepAliveAction::Reconnect => {}
                    KeepAliveAction::Wait => prop_assert!(!was_lost),
                }
                if !was_lost {
                    prop_assert!(now < guaranteed, "alive at {:?} past {:?}", now - start, guaranteed - start);
                }
                match event {
                    Event::Advance(ms) => now += Duration::from_millis(ms),
                    Event::Ack { delay_ms, ttl: ack_ttl } => {
                        let sent = machine.in_flight;
                        now += Duration::from_millis(delay_ms);
                        if let Some(sent) = sent
                            && ack_ttl > 0 && !was_lost {
                                guaranteed = guaranteed.max(sent + Duration::from_secs(ack_ttl as u64));
                            }
                        // A lease the server already forgot cannot be acknowledged as alive.
                        machine.on_ack(now, if now >= guaranteed { 0 } else { ack_ttl });
                    }
                    Event::Error => machine.on_error(now),
                }
                prop_assert!(machine.deadline() <= guaranteed);
            }
        }

        /// With every keep-alive answered well within the interval, the session never ends.
        #[test]
        fn prompt_answers_keep_it_alive(delays in proptest::collection::vec(0u64..1_000, 1..100)) {
            let start = Instant::now();
            let ttl = Duration::from_secs(6);
            let mut machine = KeepAliveSchedule::new(start, ttl);
            let mut now = start;
            for delay in delays {
                now = now.max(machine.next_wakeup());
                match machine.poll(now) {
                    KeepAliveAction::Send => {
                        now += Duration::from_millis(delay);
                        machine.on_ack(now, 6);
                    }
                    KeepAliveAction::Wait => {}
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            prop_assert_eq!(machine.lost(), None);
        }
    }

    #[test]
    fn a_missing_lease_is_lost_at_once() {
        let start = Instant::now();
        let mut machine = KeepAliveSchedule::new(start, Duration::from_secs(3));
        let now = machine.next_wakeup();
        assert_eq!(machine.poll(now), KeepAliveAction::Send);
        machine.on_ack(now, 0);
        assert_eq!(machine.poll(now), KeepAliveAction::Lost(LossReason::NotFound));
    }

    #[test]
    fn an_unanswered_keep_alive_reconnects_then_expires() {
        let start = Instant::now();
        let mut machine = KeepAliveSchedule::new(start, Duration::from_secs(3));
        let first = machine.next_wakeup();
        assert_eq!(first, start + Duration::from_secs(1));
        assert_eq!(machine.poll(first), KeepAliveAction::Send);
        let second = machine.next_wakeup();
        assert_eq!(second, start + Duration::from_secs(2));
        assert_eq!(machine.poll(second), KeepAliveAction::Reconnect);
        let end = machine.next_wakeup();
        assert_eq!(end, start + Duration::from_secs(3));
        assert_eq!(machine.poll(end), KeepAliveAction::Lost(LossReason::Expired));
    }
}
