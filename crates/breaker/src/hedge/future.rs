use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::Shared;
use crate::BoxError;
use crate::retry::RetryPolicy;

pin_project! {
    /// Response future of [`Hedge`](super::Hedge): the original attempt, the timer, and the hedge once sent. The
    /// losing attempt is dropped (cancelled) as soon as the winner answers.
    pub struct ResponseFuture<F, S, Req, P> {
        #[pin]
        first: Option<F>,
        #[pin]
        second: Option<F>,
        #[pin]
        timer: Option<Sleep>,
        // The service and the copy of the request for the hedge, until it is sent (or given up).
        hedge: Option<(S, Req)>,
        policy: P,
        shared: Arc<Shared>,
        start: Instant,
    }
}

impl<F, S, Req, P> ResponseFuture<F, S, Req, P> {
    pub(crate) fn new(
        first: F,
        hedge: Option<(S, Req, Duration)>,
        policy: P,
        shared: Arc<Shared>,
        start: Instant,
    ) -> Self {
        let (hedge, timer) = match hedge {
            Some((service, copy, delay)) => (Some((service, copy)), Some(tokio::time::sleep(delay))),
            None => (None, None),
        };
        Self {
            first: Some(first),
            second: None,
            timer,
            hedge,
            policy,
            shared,
            start,
        }
    }
}

impl<F, S, Req, P> std::fmt::Debug for ResponseFuture<F, S, Req, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("hedged", &self.second.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, S, Req, P, T, E> Future for ResponseFuture<F, S, Req, P>
where
    F: Future<Output = Result<T, E>>,
    S: Service<Req, Future = F, Response = T, Error = E>,
    E: Into<BoxError>,
    P: RetryPolicy<Req, T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();

        // The original attempt.
        if let Some(first) = this.first.as_mut().as_pin_mut()
            && let Poll::Ready(result) = first.poll(cx)
        {
            this.first.set(None);
            let result = result.map_err(Into::into);
            let wanted = !this.policy.is_retryable(result.as_ref());
            if wanted {
                let now = this.shared.clock.now();
                let latency = now.saturating_duration_since(*this.start);
                this.shared.record(latency, now);
            }
            // A retryable failure waits for a hedge in flight; anything else wins.
            if wanted || this.second.is_none() {
                this.second.set(None);
                this.timer.set(None);
                *this.hedge = None;
                return Poll::Ready(result);
            }
        }

        // The timer, then the hedge once the service is ready and the budget allows it.
        if let Some(timer) = this.timer.as_mut().as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            this.timer.set(None);
        }
        if this.timer.is_none()
            && this.second.is_none()
            && this.first.is_some()
            && let Some((service, _)) = this.hedge.as_mut()
        {
            match service.poll_ready(cx) {
                Poll::Pending => {}
                Poll::Ready(Err(_)) => *this.hedge = None,
                Poll::Ready(Ok(())) => {
                    let allowed = match &this.shared.budget {
                        Some(budget) => budget.try_withdraw(this.shared.clock.now()),
                        None => true,
                    };
                    if let (true, Some((mut service, copy))) = (allowed, this.hedge.take()) {
                        metrics::counter!("trestle_hedge_sent_total").increment(1);
                        this.second.set(Some(service.call(copy)));
                    } else {
                        metrics::counter!("trestle_hedge_budget_exhausted_total").increment(1);
                        *this.hedge = None;
                    }
                }
            }
        }

        // The hedge.
        if let Some(second) = this.second.as_mut().as_pin_mut()
            && let Poll::Ready(result) = second.poll(cx)
        {
            this.second.set(None);
            let result = result.map_err(Into::into);
            if this.first.is_some() && this.policy.is_retryable(result.as_ref()) {
                // The original is still running and this answer is not worth winning with.
                return Poll::Pending;
            }
            if this.first.is_some() {
                metrics::counter!("trestle_hedge_won_total").increment(1);
                let now = this.shared.clock.now();
                let latency = now.saturating_duration_since(*this.start);
                this.shared.record(latency, now);
            }
            this.first.set(None);
            return Poll::Ready(result);
        }
        Poll::Pending
    }
}
