//! Choosing a backend: sticky preference, then power-of-two-choices on in-flight
//! requests. The decision ([`pick`]) is pure; the randomness is passed in.
//!
//! Backends already tried for this request are never picked again. Backends marked
//! down (one refused a connection a moment ago) are skipped while any other is left:
//! without that, every request would pay a failed connect to a dead host until its
//! registration expires. A sticky client's backend is taken when it is in the set, not
//! tried and not down; otherwise two distinct random candidates are compared and the one
//! with fewer requests in flight wins (ties go to the first draw), which keeps load even
//! without any shared state between routers.

use std::net::SocketAddr;

/// What [`pick`] knows about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Where the backend listens.
    pub addr: SocketAddr,
    /// Requests this router has in flight to it.
    pub in_flight: usize,
    /// Recently refused a connection: used only when no other backend is left.
    pub down: bool,
}

/// The outcome of [`pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Use the backend at this index.
    Backend {
        /// Index into the candidates.
        index: usize,
        /// Why this one.
        reason: PickReason,
    },
    /// The app has no backend at all (503).
    NoBackend,
    /// Every backend was tried already for this request.
    AllTried,
}

/// Why a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickReason {
    /// The client's sticky backend.
    Sticky,
    /// The only backend not tried yet.
    OnlyOne,
    /// Fewer (or as many) in-flight requests than the other random draw.
    LessLoaded {
        /// In flight on the chosen backend.
        chosen: usize,
        /// In flight on the other draw.
        other: usize,
    },
}

/// Chooses among `candidates`, skipping `tried`, preferring `sticky`; `draws` are two
/// random numbers. Pure.
pub fn pick(
    candidates: &[Candidate],
    tried: &[SocketAddr],
    sticky: Option<SocketAddr>,
    draws: (u64, u64),
) -> Pick {
    if candidates.is_empty() {
        return Pick::NoBackend;
    }
    // Open: not tried yet and, while any untried one is up, not marked down. Counted
    // and indexed by iteration, as the sets are small: nothing is allocated per request.
    let untried = |c: &Candidate| !tried.contains(&c.addr);
    let any_up = candidates.iter().any(|c| untried(c) && !c.down);
    let open = || {
        candidates
            .iter()
            .enumerate()
            .filter(move |(_, c)| untried(c) && !(any_up && c.down))
            .map(|(i, _)| i)
    };
    if let Some(want) = sticky {
        if let Some(index) = open().find(|&i| candidates[i].addr == want) {
            return Pick::Backend {
                index,
                reason: PickReason::Sticky,
            };
        }
    }
    let n = open().count();
    let nth = |k: usize| open().nth(k);
    match n {
        0 => Pick::AllTried,
        1 => match nth(0) {
            Some(index) => Pick::Backend {
                index,
                reason: PickReason::OnlyOne,
            },
            None => Pick::AllTried,
        },
        n => {
            let first = (draws.0 % n as u64) as usize;
            // A second draw distinct from the first.
            let second = (first + 1 + (draws.1 % (n as u64 - 1)) as usize) % n;
            let (Some(a), Some(b)) = (nth(first), nth(second)) else {
                return Pick::AllTried;
            };
            let (chosen, other) = if candidates[b].in_flight < candidates[a].in_flight {
                (b, a)
            } else {
                (a, b)
            };
            Pick::Backend {
                index: chosen,
                reason: PickReason::LessLoaded {
                    chosen: candidates[chosen].in_flight,
                    other: candidates[other].in_flight,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn backends(loads: &[usize]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &in_flight)| Candidate {
                addr: addr(1000 + i as u16),
                in_flight,
                down: false,
            })
            .collect()
    }

    #[test]
    fn empty_and_exhausted() {
        assert_eq!(pick(&[], &[], None, (0, 0)), Pick::NoBackend);
        let b = backends(&[0, 0]);
        assert_eq!(
            pick(&b, &[addr(1000), addr(1001)], None, (0, 0)),
            Pick::AllTried
        );
    }

    #[test]
    fn skips_tried_backends() {
        let b = backends(&[0, 5, 0]);
        for draws in [(0, 0), (1, 1), (7, 3)] {
            let got = pick(&b, &[addr(1000), addr(1002)], None, draws);
            assert_eq!(
                got,
                Pick::Backend {
                    index: 1,
                    reason: PickReason::OnlyOne
                }
            );
        }
    }

    #[test]
    fn less_loaded_of_two_draws_wins() {
        let b = backends(&[9, 1, 4]);
        // draws (0, 0): candidates 0 and 1 -> 1.
        assert_eq!(
            pick(&b, &[], None, (0, 0)),
            Pick::Backend {
                index: 1,
                reason: PickReason::LessLoaded {
                    chosen: 1,
                    other: 9
                }
            }
        );
        // draws (2, 0): candidates 2 and 0 -> 2.
        assert_eq!(
            pick(&b, &[], None, (2, 0)),
            Pick::Backend {
                index: 2,
                reason: PickReason::LessLoaded {
                    chosen: 4,
                    other: 9
                }
            }
        );
    }

    #[test]
    fn two_draws_are_always_distinct_and_spread() {
        let b = backends(&[0, 0, 0, 0]);
        let mut seen = [0usize; 4];
        for d0 in 0..40u64 {
            for d1 in 0..40u64 {
                let n = b.len() as u64;
                let first = (d0 % n) as usize;
                let second = (first + 1 + (d1 % (n - 1)) as usize) % b.len();
                assert_ne!(first, second);
                if let Pick::Backend { index, .. } = pick(&b, &[], None, (d0, d1)) {
                    seen[index] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 400), "{seen:?}");
    }

    #[test]
    fn sticky_backend_is_preferred_unless_gone_or_tried() {
        let b = backends(&[50, 0]);
        assert_eq!(
            pick(&b, &[], Some(addr(1000)), (1, 0)),
            Pick::Backend {
                index: 0,
                reason: PickReason::Sticky
            }
        );
        // Tried already (it failed): fall back.
        assert_eq!(
            pick(&b, &[addr(1000)], Some(addr(1000)), (0, 0)),
            Pick::Backend {
                index: 1,
                reason: PickReason::OnlyOne
            }
        );
        // Gone from the set: the usual choice.
        assert!(matches!(
            pick(&b, &[], Some(addr(9)), (0, 0)),
            Pick::Backend {
                index: 1,
                reason: PickReason::LessLoaded { .. }
            }
        ));
    }

    #[test]
    fn down_backends_are_used_only_when_nothing_else_is_left() {
        let mut b = backends(&[0, 9, 0]);
        b[0].down = true;
        b[2].down = true;
        for draws in [(0, 0), (1, 1), (2, 5)] {
            assert_eq!(
                pick(&b, &[], Some(addr(1000)), draws),
                Pick::Backend {
                    index: 1,
                    reason: PickReason::OnlyOne
                },
                "the loaded but up backend, not the sticky down one"
            );
        }
        // The up one failed too: a down one is better than nothing.
        assert!(matches!(
            pick(&b, &[addr(1001)], None, (0, 0)),
            Pick::Backend {
                index: 0 | 2,
                reason: PickReason::LessLoaded { .. }
            }
        ));
    }
}
