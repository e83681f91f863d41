//! One page for many viewers (`viewer_pages`, what a proxy asks of a node
//! for a hot group's readers) against `read_as`, which the main check
//! compares with the model: every user's page, errors included, on
//! histories with overlays, deletions for one user, membership changes
//! and cleared history.

use std::collections::BTreeMap;

use imstore_engine::{Direction, Engine, MessageView, SealedMessages};
use proptest::prelude::*;

/// What a proxy keeps of sealed segments, by (conversation, base), across
/// the whole run: writes, recalls, edits, clearing and reopening happen
/// after segments are cached.
pub(super) type SegmentCache = BTreeMap<(u64, u64), SealedMessages>;

/// Pages of each of `ids` for every user, put together from
/// `page_parts` and the segments `cache` holds (and then keeps), equal
/// `viewer_pages`'s: a cached segment never shows what the shard would
/// not.
pub(super) fn check_cached_pages(
    engine: &Engine,
    cache: &mut SegmentCache,
    ids: &[u64],
    users: u64,
) -> Result<(), TestCaseError> {
    let viewers: Vec<u64> = (1..=users).collect();
    let fail = |what: &str, e: imstore_engine::Error| TestCaseError::fail(format!("{what}: {e}"));
    for &id in ids {
        for (from, limit, direction) in [
            (1, 10_000, Direction::Forward),
            (u64::MAX, 3, Direction::Backward),
        ] {
            let held: Vec<u64> = cache
                .range((id, 0)..=(id, u64::MAX))
                .map(|((_, b), _)| *b)
                .collect();
            let parts = engine
                .page_parts(id, from, limit, direction, &viewers, &held)
                .map_err(|e| fail("page_parts", e))?;
            prop_assert!(
                parts.sealed.iter().all(|(b, _)| !held.contains(b)),
                "a held segment was sent again"
            );
            let (assembled, brought) = parts
                .assemble(|base| cache.get(&(id, base)).cloned())
                .map_err(|e| fail("assemble", e))?;
            for (base, messages) in brought {
                cache.insert((id, base), messages);
            }
            let direct = engine
                .viewer_pages(id, from, limit, direction, &viewers)
                .map_err(|e| fail("viewer_pages", e))?;
            prop_assert_eq!(
                assembled,
                direct,
                "{} from {} limit {} {:?}",
                id,
                from,
                limit,
                direction
            );
        }
    }
    Ok(())
}

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
