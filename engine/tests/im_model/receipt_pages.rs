//! Receipts at scale against `receipts`, which the main check compares
//! with the model: counts of many messages at once, and the lists in
//! pages.

use imstore_engine::{Engine, Error};
use proptest::prelude::*;

/// Counts of many messages at once, and the lists in pages, agree with
/// [`Engine::receipts`] (checked against the model).
pub(super) fn check_receipt_pages(
    engine: &Engine,
    id: u64,
    seqs: std::ops::RangeInclusive<u64>,
) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: Error| TestCaseError::fail(format!("{what}: {e}"));
    let seqs: Vec<u64> = seqs.take(imstore_engine::MAX_RECEIPT_MESSAGES).collect();
    if seqs.is_empty() {
        return Ok(());
    }
    let counted = engine
        .receipt_pages(id, &seqs, None)
        .map_err(|e| fail("receipt counts", e))?;
    prop_assert_eq!(counted.len(), seqs.len());
    for (page, &seq) in counted.iter().zip(&seqs) {
        let whole = engine.receipts(id, seq).map_err(|e| fail("receipts", e))?;
        prop_assert_eq!(
            (page.seq, page.read_count, page.unread_count, page.stored),
            (
                seq,
                whole.read.len() as u64,
                whole.unread.len() as u64,
                whole.stored
            )
        );
        prop_assert!(page.read.is_empty() && page.unread.is_empty() && page.next_after == 0);
    }
    for &seq in seqs.iter().rev().take(2) {
        let whole = engine.receipts(id, seq).map_err(|e| fail("receipts", e))?;
        for limit in [1usize, 2] {
            let (mut read, mut unread, mut after) = (Vec::new(), Vec::new(), 0);
            loop {
                let page = engine
                    .receipt_pages(id, &[seq], Some((after, limit)))
                    .map_err(|e| fail("receipt page", e))?
                    .pop()
                    .ok_or_else(|| TestCaseError::fail("no page"))?;
                prop_assert!(page.read.len() + page.unread.len() <= limit);
                prop_assert_eq!(
                    (page.read_count, page.unread_count),
                    (whole.read.len() as u64, whole.unread.len() as u64)
                );
                read.extend(page.read);
                unread.extend(page.unread);
                if page.next_after == 0 {
                    break;
                }
                prop_assert!(page.next_after > after, "pages move on");
                after = page.next_after;
            }
            prop_assert_eq!(&read, &whole.read, "paged read list of {}:{}", id, seq);
            prop_assert_eq!(
                &unread,
                &whole.unread,
                "paged unread list of {}:{}",
                id,
                seq
            );
        }
    }
    Ok(())
}
