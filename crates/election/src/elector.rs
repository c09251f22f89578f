//! Run work only while leading, in the spirit of Kubernetes client-go's `leaderelection`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trestle_lock::{Session, SessionOptions};

use crate::{Election, ElectionError, Leadership};

/// Settings of a [`LeaderElector`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ElectorConfig {
    /// The election name shared by all candidates.
    pub name: String,
    /// What this candidate proclaims (its identity: host name, address). Observers see it.
    pub identity: Vec<u8>,
    /// Session TTL: how long a crashed leader keeps others waiting, at most. Default 15 s (client-go's
    /// `LeaseDuration`). Whole seconds, at least 1 s (etcd raises anything under 2 s).
    pub lease_ttl: Duration,
    /// Pause before campaigning again after losing leadership or failing to reach the server. Default 2 s
    /// (client-go's `RetryPeriod`).
    pub retry_period: Duration,
    /// Resign when shut down, so a successor takes over at once instead of after the TTL. Default true
    /// (client-go's `ReleaseOnCancel`).
    pub release_on_shutdown: bool,
}

impl ElectorConfig {
    /// The defaults for election `name` and candidate `identity`.
    pub fn new(name: impl Into<String>, identity: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            identity: identity.into(),
            lease_ttl: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
            release_on_shutdown: true,
        }
    }

    /// Checks the configuration; the error names the offending value.
    pub fn validate(&self) -> Result<(), ElectionError> {
        if self.name.is_empty() {
            return Err(ElectionError::EmptyName);
        }
        SessionOptions::with_ttl(self.lease_ttl).validate()?;
        if self.retry_period.is_zero() || self.retry_period > self.lease_ttl {
            return Err(ElectionError::InvalidConfig {
                field: "retry_period",
                value: format!("{:?}", self.retry_period),
                reason: "must be above zero and at most lease_ttl",
            });
        }
        Ok(())
    }
}

/// What the elector calls. Only [`on_started_leading`](Self::on_started_leading) is required.
pub trait LeaderCallbacks: Send + Sync + 'static {
    /// The leader's work. It runs while this candidate leads: when leadership is lost (or the elector shuts
    /// down) `leading.cancelled()` fires and, right after, the future is dropped. Returning ends the term
    /// early (the elector resigns and campaigns again after the retry period).
    fn on_started_leading(&self, leading: Leading) -> impl Future<Output = ()> + Send;

    /// Called after each term, once the work has stopped.
    fn on_stopped_leading(&self) {}

    /// Called with each new leader's identity (this candidate's included), in order.
    fn on_new_leader(&self, _identity: &[u8]) {}
}

/// What the leader's work gets: a cancellation token and the leadership, for fenced writes.
#[derive(Clone, Debug)]
pub struct Leading {
    cancelled: CancellationToken,
    leadership: Arc<Leadership>,
}

impl Leading {
    /// Fires when the term ends; pass clones to sub-tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.cancelled
    }

    /// Resolves when the term ends.
    pub async fn cancelled(&self) {
        self.cancelled.cancelled().await;
    }

    /// The leadership: its fencing token, fenced transactions, proclamations.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }
}

/// Campaigns in a loop and runs the callbacks' work only while leading.
#[derive(Clone)]
pub struct LeaderElector {
    client: Client,
    config: ElectorConfig,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector with a validated configuration.
    pub fn new(client: Client, config: ElectorConfig) -> Result<Self, ElectionError> {
        config.validate()?;
        Ok(Self { client, config })
    }

    /// Runs until `shutdown` is cancelled: campaign, lead (running the work), lose or finish, pause, campaign
    /// again. Returns `Ok(())` after shutdown, having resigned if it led (with `release_on_shutdown`).
    pub async fn run<C: LeaderCallbacks>(
        &self,
        callbacks: Arc<C>,
        shutdown: CancellationToken,
    ) -> Result<(), ElectionError> {
        let observer = Election::observer(self.client.clone(), &self.config.name)?;
        let watcher = {
            let callbacks = callbacks.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut leaders = observer.observe();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = leaders.next() => match next {
                            Some(Ok(leader)) => callbacks.on_new_leader(&leader.value),
                            Some(Err(e)) => {
                                warn!(error = %e, "observing the election failed; observing again");
                                leaders = observer.observe();
                            }
                            None => return,
                        },
                    }
                }
            })
        };
        while !shutdown.is_cancelled() {
            if let Err(e) = self.one_term(callbacks.as_ref(), &shutdown).await {
                warn!(election = %self.config.name, error = %e, "election term failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        watcher.abort();
        Ok(())
    }

    async fn one_term<C: LeaderCallbacks>(
        &self,
        callbacks: &C,
        shutdown: &CancellationToken,
    ) -> Result<(), ElectionError> {
        let session = Session::with_options(
            self.client.clone(),
            SessionOptions::with_ttl(self.config.lease_ttl),
        )
        .await?;
        let election = Election::new(&session, &self.config.name)?;
        let leadership = tokio::select! {
            () = shutdown.cancelled() => {
                session.close().await;
                return Ok(());
            }
            elected = election.campaign(self.config.identity.clone()) => Arc::new(elected?),
        };
        info!(election = %self.config.name, term = leadership.revision(), "started leading");
        let term = shutdown.child_token();
        let leading = Leading {
            cancelled: term.clone(),
            leadership: leadership.clone(),
        };
        let loss = leadership.loss().clone();
        let lost = {
            let work = callbacks.on_started_leading(leading);
            tokio::pin!(work);
            let lost = tokio::select! {
                () = &mut work => false,
                _ = loss.lost() => true,
                () = shutdown.cancelled() => false,
            };
            term.cancel();
            lost
            // The work future is dropped here, right after its token fired.
        };
        info!(election = %self.config.name, lost, "stopped leading");
        callbacks.on_stopped_leading();
        if !lost && (self.config.release_on_shutdown || !shutdown.is_cancelled()) {
            let _ = leadership.resign().await;
            session.close().await;
        } else if shutdown.is_cancelled() {
            // Keep the lease: the successor waits for its TTL, as configured.
            session.orphan().await;
        }
        Ok(())
    }
}
