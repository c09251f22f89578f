use std::time::Duration;

/// Reads a deadline from an incoming request and writes one into an outgoing request.
pub trait DeadlinePropagation<Req>: Clone {
    /// The time the caller gave this request, if it says.
    fn incoming(&self, req: &Req) -> Option<Duration>;
    /// Records in `req` that it has `remaining` left (for the next hop).
    fn outgoing(&self, req: &mut Req, remaining: Duration);
}

/// No propagation: the configured timeout (and any enclosing deadline) only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPropagation;

impl<Req> DeadlinePropagation<Req> for NoPropagation {
    fn incoming(&self, _req: &Req) -> Option<Duration> {
        None
    }

    fn outgoing(&self, _req: &mut Req, _remaining: Duration) {}
}

/// gRPC's `grpc-timeout` header on `http::Request`s: honoured when present, rewritten with the remaining time.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTimeout;

impl<B> DeadlinePropagation<http::Request<B>> for GrpcTimeout {
    fn incoming(&self, req: &http::Request<B>) -> Option<Duration> {
        req.headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
    }

    fn outgoing(&self, req: &mut http::Request<B>, remaining: Duration) {
        if let Ok(value) = http::HeaderValue::from_str(&format_grpc_timeout(remaining)) {
            req.headers_mut().insert(GRPC_TIMEOUT, value);
        }
    }
}

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, in the finest unit that fits 8 digits (rounding down, except that
/// a non-zero duration never becomes zero).
pub fn format_grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let n = nanos / per;
        if n <= MAX {
            return format!("{}{unit}", n.max(u128::from(nanos > 0)));
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("123456789n"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("1é"), None);
        assert_eq!(format_grpc_timeout(Duration::from_millis(100)), "100000u");
        assert_eq!(format_grpc_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(format_grpc_timeout(Duration::ZERO), "0n");
        assert_eq!(
            format_grpc_timeout(Duration::from_secs(3600 * 200_000_000)),
            "99999999H"
        );
    }

    proptest! {
        /// Formatting then parsing never rounds up, never turns a positive duration into zero, and loses less
        /// than 1000 / 99_999_999 of the value.
        #[test]
        fn round_trip(nanos in 0u64..u64::MAX / 2) {
            let d = Duration::from_nanos(nanos);
            let back = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
            prop_assert!(back <= d);
            prop_assert!(nanos == 0 || !back.is_zero());
            prop_assert!((d - back).as_nanos() * 99_999_999 <= d.as_nanos() * 1000);
        }
    }
}
