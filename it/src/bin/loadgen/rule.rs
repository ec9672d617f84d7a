//! The browser rule: what a browser facing several A records does with one failed
//! attempt. Pure.
//!
//! A GET whose connection to one address was refused, timed out, or was reset (or
//! closed) before any byte of the response arrived is sent once more, to another
//! address. Everything else that is not a 2xx response (an error status, a malformed
//! response, a body cut short, a second failed attempt) is a failed request.

/// How one attempt at one router ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status and its whole body.
    Response(u16),
    /// The connection could not be made: refused, unreachable, or no answer to the SYN
    /// within the connect timeout.
    ConnectFailed,
    /// The connection was reset or closed before any byte of the response.
    ClosedBeforeResponse,
    /// No byte of the response within the response timeout.
    TimedOut,
    /// Bytes came that are not an HTTP response.
    Malformed,
    /// The body broke off after the response had started.
    BodyCut,
}

/// What the client does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request succeeded.
    Ok,
    /// Send it again, to another address (only after the first attempt).
    RetryElsewhere,
    /// The request failed; the reason names the last attempt's outcome.
    Failed(Outcome),
}

/// The verdict after attempt `attempt` (1-based) ended with `outcome`.
pub fn verdict(outcome: Outcome, attempt: u32) -> Verdict {
    match outcome {
        Outcome::Response(status) if (200..300).contains(&status) => Verdict::Ok,
        Outcome::ConnectFailed | Outcome::ClosedBeforeResponse | Outcome::TimedOut
            if attempt == 1 =>
        {
            Verdict::RetryElsewhere
        }
        other => Verdict::Failed(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(outcome: Outcome, attempt: u32, expected: Verdict) {
        assert_eq!(
            verdict(outcome, attempt),
            expected,
            "{outcome:?} #{attempt}"
        );
    }

    #[test]
    fn success_is_any_2xx_and_nothing_else() {
        check(Outcome::Response(200), 1, Verdict::Ok);
        check(Outcome::Response(204), 2, Verdict::Ok);
        for status in [301, 404, 502, 503, 504] {
            check(
                Outcome::Response(status),
                1,
                Verdict::Failed(Outcome::Response(status)),
            );
        }
    }

    #[test]
    fn no_byte_yet_is_retried_once_elsewhere() {
        for o in [
            Outcome::ConnectFailed,
            Outcome::ClosedBeforeResponse,
            Outcome::TimedOut,
        ] {
            check(o, 1, Verdict::RetryElsewhere);
            check(o, 2, Verdict::Failed(o));
        }
    }

    #[test]
    fn bytes_seen_are_never_retried() {
        check(Outcome::Malformed, 1, Verdict::Failed(Outcome::Malformed));
        check(Outcome::BodyCut, 1, Verdict::Failed(Outcome::BodyCut));
    }
}
