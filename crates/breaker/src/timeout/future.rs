use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};

use super::Elapsed;
use crate::BoxError;

pin_project! {
    /// Response future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Running { #[pin] future: TaskLocalFuture<Instant, F>, #[pin] sleep: Sleep, budget: Duration },
        Expired { error: Option<Elapsed> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: TaskLocalFuture<Instant, F>, deadline: Instant, budget: Duration) -> Self {
        Self {
            kind: Kind::Running {
                future,
                sleep: tokio::time::sleep_until(deadline),
                budget,
            },
        }
    }

    pub(crate) fn expired(error: Elapsed) -> Self {
        Self {
            kind: Kind::Expired { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running {
                future,
                sleep,
                budget,
            } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                match sleep.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Elapsed { budget: *budget }.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
            KindProj::Expired { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => crate::PolledAfterCompletion.into(),
            })),
        }
    }
}
