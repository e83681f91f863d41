//! imstore-testkit: what the tests of every crate share.
//!
//! **Owns:** [`eventually`] and [`eventually_async`], the one way a test
//! waits for a background step (an election, a retire, a delivery, a
//! flush): it polls the condition until it holds or a deadline passes, and
//! never sleeps a fixed time or assumes an order of events it does not
//! enforce. Timing never decides a test's outcome: the deadline is only a
//! bound on a hang, generous enough for a busy 2-core CI machine.
//!
//! **Is not:** part of any shipped binary (a dev-dependency only).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two polls.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Why a condition never held: what was awaited, for how long, and the
/// last thing the poll said.
#[derive(Debug)]
pub struct GaveUp(String);

impl Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GaveUp {}

fn gave_up(what: &str, limit: Duration, polls: u32, last: Option<String>) -> GaveUp {
    GaveUp(format!(
        "gave up after {limit:?} ({polls} polls) waiting for {what}{}",
        last.map(|l| format!("; last: {l}")).unwrap_or_default()
    ))
}

/// Polls `poll` until it returns `Ok`, for at most `limit`, pausing a
/// little longer each time (5 ms doubling to 200 ms). Returns the value,
/// or [`GaveUp`] naming `what` and the last error.
pub fn eventually<T, E: Display>(
    what: &str,
    limit: Duration,
    mut poll: impl FnMut() -> Result<T, E>,
) -> Result<T, GaveUp> {
    let deadline = Instant::now() + limit;
    let (mut pause, mut polls) = (FIRST_PAUSE, 0);
    loop {
        polls += 1;
        let last = match poll() {
            Ok(value) => return Ok(value),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(gave_up(what, limit, polls, Some(last)));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`eventually`] for an async poll, pausing on tokio's timer.
pub async fn eventually_async<T, E, F, Fut>(
    what: &str,
    limit: Duration,
    mut poll: F,
) -> Result<T, GaveUp>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    let (mut pause, mut polls) = (FIRST_PAUSE, 0);
    loop {
        polls += 1;
        let last = match poll().await {
            Ok(value) => return Ok(value),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(gave_up(what, limit, polls, Some(last)));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// A condition as [`eventually`] polls it: `Ok(())` when `holds`, else an
/// error saying what is still `pending`.
pub fn holds(holds: bool, pending: impl FnOnce() -> String) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success_and_names_the_last_failure() {
        let mut calls = 0;
        let value = eventually("three calls", Duration::from_secs(10), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(value.ok(), Some(3));
        let failed = eventually("never", Duration::from_millis(20), || {
            Err::<(), _>("still not")
        });
        let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("never") && message.contains("still not"),
            "{message}"
        );
    }
}
