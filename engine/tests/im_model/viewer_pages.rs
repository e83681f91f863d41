//! One page for many viewers (`viewer_pages`, what a proxy asks of a node
//! for a hot group's readers) against `read_as`, which the main check
//! compares with the model: every user's page, errors included, on
//! histories with overlays, deletions for one user, membership changes
//! and cleared history.

use imstore_engine::{Direction, Engine, MessageView};
use proptest::prelude::*;

/// Every user's (1..=`users`) page of `id`, asked of `viewer_pages` for all
/// of them at once, equals `read_as`'s, for pages forward and backward,
/// whole and short.
pub(super) fn check_viewer_pages(
    engine: &Engine,
    id: u64,
    users: u64,
    last: u64,
) -> Result<(), TestCaseError> {
    let viewers: Vec<u64> = (1..=users).collect();
    let pages = [
        (1, 10_000, Direction::Forward),
        (u64::MAX, 2, Direction::Backward),
        (3, 2, Direction::Forward),
        (last.saturating_sub(1), 3, Direction::Backward),
    ];
    for (from, limit, direction) in pages {
        let together = engine
            .viewer_pages(id, from, limit, direction, &viewers)
            .map_err(|e| TestCaseError::fail(format!("viewer_pages: {e}")))?;
        for &viewer in &viewers {
            let alone = engine.read_as(viewer, id, from, limit, direction);
            let shared: Option<Result<Vec<MessageView>, _>> = together.page(viewer);
            prop_assert_eq!(
                shared,
                Some(alone),
                "user {} of {} from {} limit {} {:?}",
                viewer,
                id,
                from,
                limit,
                direction
            );
        }
    }
    Ok(())
}
