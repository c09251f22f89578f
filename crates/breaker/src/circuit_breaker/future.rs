use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::CircuitOpen;
use super::handle::CallGuard;
use crate::BoxError;
use crate::classify::{Classify, outcome};

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker): records the outcome when the call completes,
    /// gives the permit back if dropped first.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        guard: Option<CallGuard>,
        classifier: C,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: Option<CircuitOpen> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, guard: CallGuard, classifier: C) -> Self {
        Self {
            kind: Kind::Called { future },
            guard: Some(guard),
            classifier,
        }
    }

    pub(crate) fn rejected(error: CircuitOpen, classifier: C) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            guard: None,
            classifier,
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(guard) = this.guard.take() {
                    guard.complete(outcome(this.classifier, result.as_ref()));
                }
                Poll::Ready(result)
            }
            KindProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => Poll::Ready(Err(crate::PolledAfterCompletion.into())),
            },
        }
    }
}
