//! Buffering request bodies so that requests can be copied for retries and hedges.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;

/// A request body that is already in memory and can be cloned: what [`BufferBody`] hands to the services inside
/// it.
pub type BufferedBody = Full<Bytes>;

/// A request body was larger than [`BufferBodyLayer`]'s limit; the request was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request body larger than the {limit}-byte retry buffer")]
#[non_exhaustive]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

/// Reads each request body into memory (up to a limit), so that a [`RetryLayer`](crate::RetryLayer) or a
/// [`HedgeLayer`](crate::HedgeLayer) inside can copy the request with [`clone_http_request`](super::clone_http_request).
///
/// This is what retrying under a tonic-generated client needs: tonic's request body (`tonic::body::Body`) cannot be
/// cloned. Put this layer outside the retry layer, and turn the buffered body back into the body the transport
/// wants inside it (for a tonic `Channel`: `.map_request(|r: http::Request<BufferedBody>|
/// r.map(tonic::body::Body::new))`). Meant for unary calls: a streaming request is buffered whole (and fails with
/// [`BodyTooLarge`] past the limit). Request trailers are dropped.
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Buffers bodies of up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
        }
    }
}

/// The service made by [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferBody<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for BufferBody<S>
where
    S: Service<http::Request<BufferedBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    /// Boxed: reading the body is a wait of its own before the call.
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service polled ready makes the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => return Err(BodyTooLarge { limit }.into()),
                Err(e) => return Err(e),
            };
            let req = http::Request::from_parts(parts, Full::new(bytes));
            inner.call(req).await.map_err(Into::into)
        })
    }
}
