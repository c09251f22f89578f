//! The no-duplicate rule: after forwarding to the leader failed, whether to send the request again.

use tonic::Status;
use tracing::{debug, warn};

use super::service::{Failure, Service};
use crate::network::{Delivery, ForwardFailure};

/// Decides, after forwarding to the leader failed, whether to look for the leader and send again (`Ok`) or to
/// give the client an error. Requests the leader never acted on are always retried; idempotent ones are also
/// retried after transport failures; a write whose fate is unknown is never sent twice: the client gets
/// [`Failure::TimedOut`] or [`Failure::LeaderLost`] and decides (as etcd's own clients do).
pub(crate) fn retry_decision<S: Service>(idempotent: bool, failure: ForwardFailure) -> Result<(), Status> {
    let ForwardFailure { status, delivery } = failure;
    let transient = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    );
    match delivery {
        Delivery::Unexecuted => {
            debug!(%status, "the leader did not take the request; retrying");
            Ok(())
        }
        Delivery::Answered if transient && idempotent => Ok(()),
        Delivery::Answered => Err(status),
        Delivery::Unknown if idempotent => {
            debug!(%status, "forward to the leader failed; retrying");
            Ok(())
        }
        Delivery::Unknown => {
            warn!(%status, "the leader went away holding a write; its outcome is unknown");
            Err(S::status(if status.code() == tonic::Code::DeadlineExceeded {
                Failure::TimedOut
            } else {
                Failure::LeaderLost
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicated::tests::Plain;

    fn failure(code: tonic::Code, delivery: Delivery) -> ForwardFailure {
        ForwardFailure {
            status: Status::new(code, "x"),
            delivery,
        }
    }

    fn decide(idempotent: bool, code: tonic::Code, delivery: Delivery) -> Result<(), Status> {
        retry_decision::<Plain>(idempotent, failure(code, delivery))
    }

    #[test]
    fn a_write_is_sent_again_only_when_the_leader_surely_did_nothing() {
        use tonic::Code::{DeadlineExceeded, InvalidArgument, Unavailable, Unknown};
        // Never reached the leader, or the leader said it did nothing: retry, write or not.
        for idempotent in [true, false] {
            assert!(decide(idempotent, Unavailable, Delivery::Unexecuted).is_ok());
        }
        // The connection broke while the leader had it: a read index is asked again…
        assert!(decide(true, Unknown, Delivery::Unknown).is_ok());
        assert!(decide(true, DeadlineExceeded, Delivery::Unknown).is_ok());
        // …a write is not: its fate is unknown, and the client is told so.
        let lost = decide(false, Unknown, Delivery::Unknown).unwrap_err();
        assert_eq!(lost.code(), Unavailable);
        assert_eq!(lost.message(), Failure::LeaderLost.to_string());
        let late = decide(false, DeadlineExceeded, Delivery::Unknown).unwrap_err();
        assert_eq!(late.message(), Failure::TimedOut.to_string());
        // A definite answer is the answer; only idempotent requests retry a transient one.
        assert_eq!(
            decide(false, InvalidArgument, Delivery::Answered)
                .unwrap_err()
                .code(),
            InvalidArgument
        );
        assert!(decide(false, Unavailable, Delivery::Answered).is_err());
        assert!(decide(true, Unavailable, Delivery::Answered).is_ok());
    }
}
