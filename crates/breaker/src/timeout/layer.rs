use std::time::Duration;

use tower_layer::Layer;

use super::{NoPropagation, Timeout};
use crate::config::{self, ConfigError};

/// Applies a timeout (and optionally deadline propagation).
#[derive(Debug, Clone)]
pub struct TimeoutLayer<P = NoPropagation> {
    timeout: Duration,
    propagation: P,
}

impl TimeoutLayer {
    /// A timeout of `timeout` per call; it must be positive.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        config::positive_duration("timeout", timeout)?;
        Ok(Self {
            timeout,
            propagation: NoPropagation,
        })
    }
}

impl<P> TimeoutLayer<P> {
    /// Also honours and forwards deadlines carried by requests (e.g. [`super::GrpcTimeout`]).
    pub fn with_propagation<P2>(self, propagation: P2) -> TimeoutLayer<P2> {
        TimeoutLayer {
            timeout: self.timeout,
            propagation,
        }
    }
}

impl<S, P: Clone> Layer<S> for TimeoutLayer<P> {
    type Service = Timeout<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout, self.propagation.clone())
    }
}
