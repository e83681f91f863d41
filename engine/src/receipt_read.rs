//! Receipts at scale: counts of many messages from one pass over the
//! members, and the read and unread lists in pages by user id, so that a
//! group of 100,000 answers in bytes that do not grow with it.

use super::im_read::{corrupt_value, key_id, scan_prefix};
use super::Engine;
use crate::codec::{self, im_key, tag, MemberEntry};
use crate::store::CF_RECEIPTS;
use crate::{Error, ReceiptPage, Result};

/// Most messages one [`Engine::receipt_pages`] call covers.
pub const MAX_RECEIPT_MESSAGES: usize = 100;

/// One message's receipts as they are being counted.
struct Counting {
    seq: u64,
    sender: u64,
    /// The stored read list (ascending), when the message has one.
    stored: Option<Vec<u64>>,
    read_count: u64,
    unread_count: u64,
    /// Users of the page (`after` < id), ascending, with whether they read.
    page: Vec<(u64, bool)>,
}

impl Engine {
    /// The receipts of messages `seqs` of `conversation` (at most
    /// [`MAX_RECEIPT_MESSAGES`], each at most once), counted as
    /// [`Engine::receipts`] lists them, from one pass over the members.
    /// With `lists = Some((after, limit))` each answer also carries the
    /// users above `after`, read and unread together in id order, at most
    /// `limit` of them, and where the next page starts; with `None`, counts
    /// only.
    pub fn receipt_pages(
        &self,
        conversation: u64,
        seqs: &[u64],
        lists: Option<(u64, usize)>,
    ) -> Result<Vec<ReceiptPage>> {
        if seqs.is_empty() || seqs.len() > MAX_RECEIPT_MESSAGES {
            return Err(Error::InvalidArgument(format!(
                "receipts of 1 to {MAX_RECEIPT_MESSAGES} messages at a time, not {}",
                seqs.len()
            )));
        }
        let state = self.managed_state(conversation)?;
        let mut counting = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if counting.iter().any(|c: &Counting| c.seq == seq) {
                return Err(Error::InvalidArgument(format!(
                    "message {seq} is asked twice"
                )));
            }
            let sender = self.sender_of(conversation, &state, seq)?;
            let stored = self
                .store()
                .get_in(CF_RECEIPTS, &codec::receipt_key(conversation, seq))?
                .map(|bytes| codec::decode_user_set(&bytes).map_err(corrupt_value("receipt set")))
                .transpose()?;
            counting.push(Counting {
                seq,
                sender,
                read_count: stored.as_ref().map_or(0, |s| s.len() as u64),
                stored,
                unread_count: 0,
                page: Vec::new(),
            });
        }
        let (after, limit) = lists.unwrap_or((u64::MAX, 0));
        let prefix = im_key(tag::MEMBER, &[conversation], &[]);
        // Members come in ascending id order.
        for (key, value) in scan_prefix(self.store(), &prefix, usize::MAX)? {
            let user = key_id(&key, 1)?;
            let entry = MemberEntry::decode(&value).map_err(corrupt_value("member entry"))?;
            for c in &mut counting {
                if user == c.sender || !entry.sees(c.seq) {
                    continue;
                }
                let read = match &c.stored {
                    Some(set) => set.binary_search(&user).is_ok(),
                    None => entry.read_seq >= c.seq,
                };
                if !read {
                    c.unread_count += 1;
                } else if c.stored.is_none() {
                    c.read_count += 1;
                }
                // A stored list's readers join the page in `finish`; one
                // past the limit tells whether more remain.
                let listed_here = c.stored.is_none() || !read;
                if listed_here && user > after && c.page.len() <= limit {
                    c.page.push((user, read));
                }
            }
        }
        Ok(counting
            .into_iter()
            .map(|c| finish(c, after, limit, lists.is_some()))
            .collect())
    }
}

/// The answer for one message: a stored list's readers join the page here
/// (they may have left the group, so the member scan does not see them).
fn finish(mut c: Counting, after: u64, limit: usize, lists: bool) -> ReceiptPage {
    if !lists {
        return ReceiptPage {
            seq: c.seq,
            read_count: c.read_count,
            unread_count: c.unread_count,
            read: Vec::new(),
            unread: Vec::new(),
            next_after: 0,
            stored: c.stored.is_some(),
        };
    }
    if let Some(set) = &c.stored {
        c.page.extend(
            set.iter()
                .copied()
                .filter(|&u| u > after)
                .take(limit + 1)
                .map(|u| (u, true)),
        );
        c.page.sort_unstable();
    }
    let next_after = if c.page.len() > limit {
        c.page.truncate(limit);
        c.page.last().map_or(0, |&(user, _)| user)
    } else {
        0
    };
    let (read, unread): (Vec<_>, Vec<_>) = c.page.into_iter().partition(|&(_, read)| read);
    ReceiptPage {
        seq: c.seq,
        read_count: c.read_count,
        unread_count: c.unread_count,
        read: read.into_iter().map(|(u, _)| u).collect(),
        unread: unread.into_iter().map(|(u, _)| u).collect(),
        next_after,
        stored: c.stored.is_some(),
    }
}
