use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{ConcurrencyLimited, Slot};
use crate::BoxError;
use crate::classify::{Classify, outcome};
use crate::machine::LimitAlgorithm;

pin_project! {
    /// Response future of [`AdaptiveConcurrency`](super::AdaptiveConcurrency).
    pub struct ResponseFuture<F, A: LimitAlgorithm, C> {
        #[pin]
        kind: Kind<F>,
        slot: Option<Slot<A>>,
        classifier: C,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: Option<ConcurrencyLimited> },
    }
}

impl<F, A: LimitAlgorithm, C> std::fmt::Debug for ResponseFuture<F, A, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, A: LimitAlgorithm, C> ResponseFuture<F, A, C> {
    pub(crate) fn called(future: F, slot: Slot<A>, classifier: C) -> Self {
        Self {
            kind: Kind::Called { future },
            slot: Some(slot),
            classifier,
        }
    }

    pub(crate) fn rejected(error: ConcurrencyLimited, classifier: C) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            slot: None,
            classifier,
        }
    }
}

impl<F, A, C, T, E> Future for ResponseFuture<F, A, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    A: LimitAlgorithm,
    C: Classify<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(slot) = this.slot.take() {
                    slot.complete(outcome(this.classifier, result.as_ref()));
                }
                Poll::Ready(result)
            }
            KindProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => crate::PolledAfterCompletion.into(),
            })),
        }
    }
}
