//! Whether a failed attempt is retried on another backend. Pure.
//!
//! A request may be sent again only when the first backend cannot have acted on it:
//! the connection was never established ([`Failure::Connect`]), or the backend closed
//! the connection before sending any byte of a response and the method is idempotent
//! (RFC 9110 9.2.2), so a second execution does no harm. Anything after the response
//! started is never retried (its bytes went to the client). Timeouts are not retried:
//! the backend may still be working on the request, and the client is answered 504.

use http::Method;

/// How one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection to the backend (refused, unreachable, connect timeout).
    Connect,
    /// The backend closed (or reset) the connection before any byte of the response.
    ClosedBeforeResponse,
    /// No response headers within the backend timeout.
    Timeout,
    /// The router holds its most backend connections and this attempt needed another:
    /// nothing was sent, and no other backend would fare better.
    Overloaded,
    /// Anything else (a malformed response...).
    Other,
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryVerdict {
    /// Send the request to another backend.
    Retry(RetryReason),
    /// Answer the client with an error.
    GiveUp(GiveUpReason),
}

/// Why a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Nothing was sent: the connection failed.
    ConnectFailed,
    /// The backend closed before responding; the method is idempotent.
    ClosedIdempotent,
}

impl RetryReason {
    /// Short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ConnectFailed => "connect",
            RetryReason::ClosedIdempotent => "closed",
        }
    }
}

/// Why no retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The attempt budget is spent.
    Exhausted {
        /// Attempts made.
        attempts: usize,
    },
    /// The backend may have processed a non-idempotent request.
    NotIdempotent,
    /// The backend did not answer in time (504).
    TimedOut,
    /// The router is out of backend connections (503).
    Overloaded,
    /// A failure that retrying does not cure.
    Failed,
}

/// The verdict after attempt number `attempt` (1-based) failed with `failure`. Pure.
pub fn verdict(
    failure: Failure,
    method: &Method,
    attempt: usize,
    max_attempts: usize,
) -> RetryVerdict {
    let reason = match failure {
        Failure::Timeout => return RetryVerdict::GiveUp(GiveUpReason::TimedOut),
        Failure::Overloaded => return RetryVerdict::GiveUp(GiveUpReason::Overloaded),
        Failure::Other => return RetryVerdict::GiveUp(GiveUpReason::Failed),
        Failure::ClosedBeforeResponse if !is_idempotent(method) => {
            return RetryVerdict::GiveUp(GiveUpReason::NotIdempotent)
        }
        Failure::ClosedBeforeResponse => RetryReason::ClosedIdempotent,
        Failure::Connect => RetryReason::ConnectFailed,
    };
    if attempt >= max_attempts {
        RetryVerdict::GiveUp(GiveUpReason::Exhausted { attempts: attempt })
    } else {
        RetryVerdict::Retry(reason)
    }
}

/// Idempotent methods (RFC 9110 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use GiveUpReason::*;
    use RetryVerdict::*;

    fn check(failure: Failure, method: Method, attempt: usize, expected: RetryVerdict) {
        assert_eq!(
            verdict(failure, &method, attempt, 3),
            expected,
            "{failure:?} {method} #{attempt}"
        );
    }

    #[test]
    fn verdicts() {
        check(
            Failure::Connect,
            Method::POST,
            1,
            Retry(RetryReason::ConnectFailed),
        );
        check(
            Failure::Connect,
            Method::GET,
            2,
            Retry(RetryReason::ConnectFailed),
        );
        check(
            Failure::Connect,
            Method::GET,
            3,
            GiveUp(Exhausted { attempts: 3 }),
        );
        check(
            Failure::ClosedBeforeResponse,
            Method::GET,
            1,
            Retry(RetryReason::ClosedIdempotent),
        );
        check(
            Failure::ClosedBeforeResponse,
            Method::PUT,
            2,
            Retry(RetryReason::ClosedIdempotent),
        );
        check(
            Failure::ClosedBeforeResponse,
            Method::DELETE,
            3,
            GiveUp(Exhausted { attempts: 3 }),
        );
        check(
            Failure::ClosedBeforeResponse,
            Method::POST,
            1,
            GiveUp(NotIdempotent),
        );
        check(
            Failure::ClosedBeforeResponse,
            Method::PATCH,
            1,
            GiveUp(NotIdempotent),
        );
        check(Failure::Timeout, Method::GET, 1, GiveUp(TimedOut));
        check(Failure::Overloaded, Method::GET, 1, GiveUp(Overloaded));
        check(Failure::Other, Method::GET, 1, GiveUp(Failed));
    }

    #[test]
    fn labels() {
        assert_eq!(RetryReason::ConnectFailed.label(), "connect");
        assert_eq!(RetryReason::ClosedIdempotent.label(), "closed");
    }
}
