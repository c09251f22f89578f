use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use super::{BulkheadTimeout, QueueSlot};
use crate::BoxError;

type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

pin_project! {
    /// Response future of [`Bulkhead`](super::Bulkhead). Holds the slot until it completes or is dropped.
    pub struct ResponseFuture<S: Service<Req>, Req> {
        #[pin]
        state: State<S, Req>,
        permit: Option<OwnedSemaphorePermit>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Queued { acquire: Acquire, service: Option<S>, req: Option<Req>, slot: Option<QueueSlot>, max_wait: Duration },
        Running { #[pin] future: S::Future },
        Rejected { error: Option<BoxError> },
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("has_slot", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn running(future: S::Future, permit: OwnedSemaphorePermit) -> Self {
        Self {
            state: State::Running { future },
            permit: Some(permit),
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        Self {
            state: State::Rejected { error: Some(error) },
            permit: None,
        }
    }

    pub(crate) fn queued(
        service: S,
        req: Req,
        slot: QueueSlot,
        semaphore: Arc<Semaphore>,
        max_wait: Duration,
    ) -> Self {
        let acquire: Acquire = Box::pin(async move {
            tokio::time::timeout(max_wait, semaphore.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        });
        Self {
            state: State::Queued {
                acquire,
                service: Some(service),
                req: Some(req),
                slot: Some(slot),
                max_wait,
            },
            permit: None,
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Queued {
                    acquire,
                    service,
                    req,
                    slot,
                    max_wait,
                } => {
                    let permit = ready!(acquire.as_mut().poll(cx));
                    slot.take();
                    let Some(permit) = permit else {
                        let error = BulkheadTimeout { max_wait: *max_wait };
                        this.state.set(State::Rejected {
                            error: Some(error.into()),
                        });
                        continue;
                    };
                    match (service.take(), req.take()) {
                        (Some(mut service), Some(req)) => {
                            *this.permit = Some(permit);
                            let future = service.call(req);
                            this.state.set(State::Running { future });
                        }
                        _ => return Poll::Ready(Err(crate::PolledAfterCompletion.into())),
                    }
                }
                StateProj::Running { future } => {
                    let result = ready!(future.poll(cx));
                    this.permit.take();
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Rejected { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| crate::PolledAfterCompletion.into())));
                }
            }
        }
    }
}
