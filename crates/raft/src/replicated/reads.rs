//! Read-index rounds shared by concurrent linearizable reads.
//!
//! A linearizable read needs a read index the leader confirmed with a quorum *after* the read arrived. One
//! confirmation serves every read that was waiting when it started, so reads arriving together share one round
//! (one forward to the leader, one quorum heartbeat) instead of paying one each. Reads that arrive while a
//! round is out wait for the next one: a round that began before them could miss a write acknowledged before
//! they arrived.

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tonic::Status;

type Waiter = oneshot::Sender<Result<u64, Status>>;

/// Who waits for the next round, and whether a round is out.
#[derive(Debug, Default)]
pub(crate) struct ReadRounds {
    state: Mutex<RoundState>,
}

#[derive(Debug, Default)]
struct RoundState {
    running: bool,
    waiting: Vec<Waiter>,
}

/// What [`ReadRounds::join`] asks of its caller.
pub(crate) enum Joined {
    /// Wait for the answer; a round is out and the next one will include this read.
    Wait(oneshot::Receiver<Result<u64, Status>>),
    /// No round is out: run rounds (calling [`ReadRounds::take_next`] until it returns `None`), then wait.
    RunRounds(oneshot::Receiver<Result<u64, Status>>),
}

impl ReadRounds {
    /// Registers a read for the next round.
    pub(crate) fn join(&self) -> Joined {
        let (reply, answer) = oneshot::channel();
        let mut state = self.state.lock();
        state.waiting.push(reply);
        if state.running {
            Joined::Wait(answer)
        } else {
            state.running = true;
            Joined::RunRounds(answer)
        }
    }

    /// The reads the next round answers, taken now (so every one of them arrived before the round starts);
    /// `None` when nobody waits, and the runner stops.
    pub(crate) fn take_next(&self) -> Option<Vec<Waiter>> {
        let mut state = self.state.lock();
        state.waiting.retain(|w| !w.is_closed());
        if state.waiting.is_empty() {
            state.running = false;
            return None;
        }
        Some(std::mem::take(&mut state.waiting))
    }
}

/// Answers a round's reads.
pub(crate) fn answer(round: Vec<Waiter>, result: &Result<u64, Status>) {
    for waiter in round {
        let _ = waiter.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_arriving_during_a_round_waits_for_the_next() {
        let rounds = ReadRounds::default();
        let Joined::RunRounds(mut first) = rounds.join() else {
            panic!("the first read runs the rounds")
        };
        let round_one = rounds.take_next().expect("one read waits");
        // A second read arrives while round one is out.
        let Joined::Wait(mut second) = rounds.join() else {
            panic!("a round is already running")
        };
        answer(round_one, &Ok(10));
        assert_eq!(first.try_recv().expect("answered").ok(), Some(10));
        assert!(
            second.try_recv().is_err(),
            "round one began before the second read"
        );
        let round_two = rounds.take_next().expect("the second read waits");
        answer(round_two, &Ok(12));
        assert_eq!(second.try_recv().expect("answered").ok(), Some(12));
        assert!(rounds.take_next().is_none(), "nobody waits: the runner stops");
        assert!(
            matches!(rounds.join(), Joined::RunRounds(_)),
            "and the next read starts one"
        );
    }

    #[test]
    fn readers_that_gave_up_are_not_served() {
        let rounds = ReadRounds::default();
        let Joined::RunRounds(first) = rounds.join() else {
            panic!("the first read runs the rounds")
        };
        drop(first);
        assert!(rounds.take_next().is_none());
    }
}
