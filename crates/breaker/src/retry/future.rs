use std::future::Future;
use std::pin::Pin;

use crate::BoxError;

/// Response future of [`Retry`](super::Retry): the whole retry loop. Boxed (one allocation per call); retries are
/// the slow path by design.
pub type ResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;
