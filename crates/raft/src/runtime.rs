//! The async runtime every group's openraft runs on: tokio, with a random number generator that a simulation
//! can seed.
//!
//! openraft draws random numbers for election timeouts and for the phase of each node's first tick. In a
//! process they come from the operating system, so that members of a group do not time out together. A
//! deterministic simulation ([`seed_thread_rng`]) seeds them instead, so that one seed gives one execution.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::async_runtime::{Mpsc, Select2, Select3, Select4, TryRecvError};
use openraft_rt_tokio::TokioRuntime;
use rand010::SeedableRng;
use rand010::rngs::SmallRng;

thread_local! {
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes openraft's random numbers on this thread follow `seed` (a simulation running every node on one
/// thread calls this before it starts), or come from the operating system again (`None`, the default).
pub fn seed_thread_rng(seed: Option<u64>) {
    SEED.with(|cell| cell.set(seed));
}

/// The next generator: from the thread's seed sequence when one is set, else from the operating system.
fn next_rng() -> SmallRng {
    SEED.with(|cell| match cell.get() {
        Some(seed) => {
            // splitmix64: every call gets a fresh, well-mixed seed from the sequence.
            let next = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            cell.set(Some(next));
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            SmallRng::seed_from_u64(z ^ (z >> 31))
        }
        None => SmallRng::from_rng(&mut rand010::rng()),
    })
}

/// tokio (openraft's own tokio runtime), with [`seed_thread_rng`]'s generator.
#[derive(Debug)]
pub struct TrestleRuntime {
    inner: TokioRuntime,
}

impl openraft::AsyncRuntime for TrestleRuntime {
    type JoinError = <TokioRuntime as openraft::AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as openraft::AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as openraft::AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as openraft::AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as openraft::AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as openraft::AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;
    type Mpsc = <TokioRuntime as openraft::AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as openraft::AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as openraft::AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as openraft::AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(a: A, b: B) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        next_rng()
    }

    fn new(threads: usize) -> Self {
        Self {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }

    fn mpsc_recv_deadline<T: OptionalSend>(
        receiver: &mut <Self::Mpsc as Mpsc>::Receiver<T>,
        deadline: Self::Instant,
    ) -> impl Future<Output = Result<T, TryRecvError>> + OptionalSend {
        TokioRuntime::mpsc_recv_deadline(receiver, deadline)
    }
}

#[cfg(test)]
mod tests {
    use openraft::AsyncRuntime;
    use rand010::RngExt;

    use super::*;

    fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| TrestleRuntime::thread_rng().random_range(0..1_000_000u64))
            .collect()
    }

    #[test]
    fn a_seeded_thread_repeats_its_draws_and_an_unseeded_one_does_not() {
        seed_thread_rng(Some(7));
        let first = draws();
        seed_thread_rng(Some(7));
        assert_eq!(draws(), first, "the same seed drew different numbers");
        seed_thread_rng(Some(8));
        assert_ne!(draws(), first, "another seed drew the same numbers");
        seed_thread_rng(None);
        let (a, b) = (draws(), draws());
        assert_ne!(a, b, "the operating system's generator repeated itself");
    }
}
