use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{Shared, Throttled};
use crate::BoxError;
use crate::classify::{Classify, outcome};

pin_project! {
    /// Response future of [`AdaptiveThrottle`](super::AdaptiveThrottle).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        shared: Option<Arc<Shared>>,
        classifier: C,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: Option<Throttled> },
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, shared: Arc<Shared>, classifier: C) -> Self {
        Self {
            kind: Kind::Called { future },
            shared: Some(shared),
            classifier,
        }
    }

    pub(crate) fn rejected(error: Throttled, classifier: C) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            shared: None,
            classifier,
        }
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
                if let Some(shared) = this.shared.take() {
                    shared.record(outcome(this.classifier, result.as_ref()));
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
