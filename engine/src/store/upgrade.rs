//! Formats 3 → 4 → 5 → 6 → 7 → 8 in place (`docs/format.md`,
//! "Upgrades"): inbox rows become message copies (4), each user gets a
//! friend list of their own (5), views of their conversations (6), views
//! that are remote whenever the user may see a message sent without copies
//! (7), and block lists, which rewrite nothing (8).
//!
//! Format 3 kept an inbox entry as a pointer (conversation, seq) into a
//! timeline of the same shard. Format 4 keeps a copy of the message in
//! the user's inbox (so that an inbox can live in another shard than the
//! conversation), the index `X user conv seq`, and the fan-out mode rows
//! `S conv seq` that tell later recalls, edits and clears which messages
//! have copies. The upgrade builds all three from what format 3 holds.
//! Only a directory whose data is one shard per placement (a single
//! store, or a one-shard cluster) can be upgraded here: with more shards,
//! copies belong in other shards than the pointers, which takes the
//! cluster, not one replica. Such a directory is refused, untouched.
//!
//! Format 4 kept friends only as the pair's rows (`F`, in the pair's
//! shard). Format 5 adds each user's side in the user's shard (`R`),
//! copied from them; the same one-shard rule applies.
//!
//! Format 5 computed a user's conversation list from the conversations'
//! rows. Format 6 keeps each user's view of each conversation in the
//! user's shard (`V`, with the activity index `A` and the remote list
//! `B`), computed here from the member rows as the apply step computes
//! them; the same one-shard rule applies.
//!
//! Format 6 kept a view local when a group had crossed back below the
//! fan-out threshold, though the user may see messages of it sent without
//! copies; format 7's sync asks only remote views' shards for those, so
//! the upgrade removes every view and computes them again (format 5's
//! step, the same one-shard rule). Device cursors of format 6 (a change
//! counter) are read as they are: a sync converts them.
use std::collections::BTreeMap;
use std::path::Path;

use rocksdb::{ReadOptions, WriteBatch, WriteOptions};

use super::{
    shard_key, store_wide_key, Store, CF_IM, CF_META, META_FORMAT_VERSION, SHARD_PREFIX_LEN,
};
use crate::codec::{
    self, im_key, tag, ConversationState, InboxCopy, InboxEntry, MemberEntry, OverlayEntry,
    UserView, FORMAT_VERSION,
};
use crate::error::corrupt_metadata as corrupt;
use crate::{Error, Result};

/// The format whose inbox rows are pointers.
pub(super) const POINTER_INBOX_FORMAT: u32 = 3;

/// The format whose friends are only the pairs' rows.
pub(super) const PAIR_FRIENDS_FORMAT: u32 = 4;

/// The format without users' views of their conversations.
pub(super) const NO_VIEWS_FORMAT: u32 = 5;

/// The format whose views may be local with messages sent without copies.
pub(super) const LOCAL_BIG_VIEWS_FORMAT: u32 = 6;

/// The format before block lists (rows `K` and `L`, outbox effect 8).
pub(super) const NO_BLOCKS_FORMAT: u32 = 7;

/// The format before conversation settings (rows `N` and `G`).
pub(super) const NO_SETTINGS_FORMAT: u32 = 8;

/// A conversation's state and fan-out mode rows, by (shard, id).
type ConversationRows = (u16, u64, ConversationState, Vec<(u64, bool)>);

/// Rows written per batch of the upgrade.
const BATCH_ROWS: usize = 10_000;

impl Store {
    /// Upgrades a format 3 directory to format 4 (see the module doc).
    /// Idempotent: a crash part-way leaves the version at 3 and the next
    /// open converts what is left (rows already copied are recognised by
    /// their version byte).
    pub(super) fn upgrade_inbox_copies(&self, path: &Path, placement_shards: u64) -> Result<()> {
        refuse_on_many_shards(path, placement_shards, POINTER_INBOX_FORMAT, "inbox")?;
        tracing::info!(path = %path.display(), from = POINTER_INBOX_FORMAT, to = PAIR_FRIENDS_FORMAT, "upgrading the data directory: inbox entries become message copies");
        let im = self.cf(CF_IM)?;
        let mut it = self.scan_im_from_start()?;
        // Seqs that were fanned out, per (shard, conversation): every such
        // send left a copy at least in its sender's inbox.
        let mut fanned: BTreeMap<(u16, u64), Vec<u64>> = BTreeMap::new();
        let mut batch = WriteBatch::default();
        let mut converted = 0u64;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key.len() < SHARD_PREFIX_LEN {
                it.next();
                continue;
            }
            let shard = u16::from_be_bytes([key[0], key[1]]);
            let rest = &key[SHARD_PREFIX_LEN..];
            if rest.first() == Some(&tag::INBOX) {
                let user = codec::im_key_id(rest, 0).map_err(corrupt("inbox key"))?;
                let inbox_seq = codec::im_key_id(rest, 1).map_err(corrupt("inbox key"))?;
                if value.first() == Some(&codec::INBOX_COPY_VERSION) {
                    let copy = InboxCopy::decode(value).map_err(corrupt("inbox copy"))?;
                    fanned
                        .entry((shard, copy.conversation))
                        .or_default()
                        .push(copy.seq);
                } else {
                    let entry = InboxEntry::decode(value).map_err(corrupt("inbox entry"))?;
                    let copy = self.copy_of(shard, user, entry)?;
                    if !copy.cleared {
                        batch.put_cf(
                            im,
                            shard_key(
                                shard,
                                &im_key(
                                    tag::INBOX_INDEX,
                                    &[user, entry.conversation, entry.seq],
                                    &[],
                                ),
                            ),
                            inbox_seq.to_be_bytes(),
                        );
                    }
                    batch.put_cf(im, key, copy.encode());
                    fanned
                        .entry((shard, entry.conversation))
                        .or_default()
                        .push(entry.seq);
                    converted += 1;
                    if batch.len() >= BATCH_ROWS {
                        self.db.write(std::mem::take(&mut batch))?;
                        tracing::info!(converted, "upgrade: inbox entries copied");
                    }
                }
            }
            it.next();
        }
        it.status()?;
        for ((shard, conversation), mut seqs) in fanned {
            seqs.sort_unstable();
            seqs.dedup();
            let last_seq = self.shard(shard).conversation_state(conversation)?.last_seq;
            for (seq, fanned_out) in mode_changes(&seqs, last_seq) {
                batch.put_cf(
                    im,
                    shard_key(shard, &im_key(tag::FANOUT_MODE, &[conversation, seq], &[])),
                    [u8::from(fanned_out)],
                );
            }
        }
        self.finish_upgrade(batch, PAIR_FRIENDS_FORMAT)?;
        tracing::info!(converted, "upgrade: inbox copies done");
        Ok(())
    }

    /// Upgrades a format 4 directory to format 5 (see the module doc):
    /// each pair row `F user other` is copied to `R user other` in the same
    /// shard, which is the user's when there is one shard. Idempotent: the
    /// version moves to 5 in the last batch.
    pub(super) fn upgrade_friend_lists(&self, path: &Path, placement_shards: u64) -> Result<()> {
        refuse_on_many_shards(path, placement_shards, PAIR_FRIENDS_FORMAT, "friend list")?;
        tracing::info!(path = %path.display(), from = PAIR_FRIENDS_FORMAT, to = FORMAT_VERSION, "upgrading the data directory: users get friend lists");
        let im = self.cf(CF_IM)?;
        let mut it = self.scan_im_from_start()?;
        let mut batch = WriteBatch::default();
        let mut copied = 0u64;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key.len() > SHARD_PREFIX_LEN && key[SHARD_PREFIX_LEN] == tag::FRIEND {
                let mut list_key = key.to_vec();
                list_key[SHARD_PREFIX_LEN] = tag::FRIEND_LIST;
                batch.put_cf(im, list_key, value);
                copied += 1;
                if batch.len() >= BATCH_ROWS {
                    self.db.write(std::mem::take(&mut batch))?;
                    tracing::info!(copied, "upgrade: friend rows copied");
                }
            }
            it.next();
        }
        it.status()?;
        self.finish_upgrade(batch, NO_VIEWS_FORMAT)?;
        tracing::info!(copied, "upgrade: friend lists done");
        Ok(())
    }

    /// Upgrades a format 5 directory to format 6 (see the module doc):
    /// a view per member row, in the same shard, which is the user's when
    /// there is one shard. Idempotent: every row written is a function of
    /// the member rows, and the version moves to 6 in the last batch.
    /// A format 6 directory first loses every view (format 7 computes them
    /// again, with its rule): idempotent the same way.
    pub(super) fn upgrade_user_views(
        &self,
        path: &Path,
        placement_shards: u64,
        fanout_max_members: u32,
        from: u32,
    ) -> Result<()> {
        let what = if from == LOCAL_BIG_VIEWS_FORMAT {
            "sync"
        } else {
            "conversation list"
        };
        refuse_on_many_shards(path, placement_shards, from, what)?;
        tracing::info!(path = %path.display(), from, to = FORMAT_VERSION, "upgrading the data directory: users get views of their conversations");
        let im = self.cf(CF_IM)?;
        let mut batch = WriteBatch::default();
        if from == LOCAL_BIG_VIEWS_FORMAT {
            let mut it = self.scan_im_from_start()?;
            let mut removed = 0u64;
            while let Some(key) = it.key() {
                let view_row = key.len() > SHARD_PREFIX_LEN
                    && [tag::VIEW, tag::ACTIVITY, tag::REMOTE_VIEW]
                        .contains(&key[SHARD_PREFIX_LEN]);
                if view_row {
                    batch.delete_cf(im, key);
                    removed += 1;
                    if batch.len() >= BATCH_ROWS {
                        self.db.write(std::mem::take(&mut batch))?;
                        tracing::info!(removed, "upgrade: format 6 views removed");
                    }
                }
                it.next();
            }
            it.status()?;
            drop(it);
            // Removed before any view is written again (write order).
            self.db.write(std::mem::take(&mut batch))?;
        }
        let mut it = self.scan_im_from_start()?;
        let mut written = 0u64;
        // Member rows come per (shard, conversation): its state and fan-out
        // modes are read once.
        let mut conversation: Option<ConversationRows> = None;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key.len() <= SHARD_PREFIX_LEN || key[SHARD_PREFIX_LEN] != tag::MEMBER {
                it.next();
                continue;
            }
            let shard = u16::from_be_bytes([key[0], key[1]]);
            let rest = &key[SHARD_PREFIX_LEN..];
            let id = codec::im_key_id(rest, 0).map_err(corrupt("member key"))?;
            let user = codec::im_key_id(rest, 1).map_err(corrupt("member key"))?;
            if conversation
                .as_ref()
                .is_none_or(|(s, c, _, _)| (*s, *c) != (shard, id))
            {
                let view = self.shard(shard);
                let state = view.conversation_state(id)?;
                let modes = view
                    .scan_in(
                        CF_IM,
                        &im_key(tag::FANOUT_MODE, &[id, 0], &[]),
                        &im_key(tag::FANOUT_MODE, &[id.saturating_add(1)], &[]),
                        usize::MAX,
                    )?
                    .into_iter()
                    .map(|(k, v)| {
                        let seq = codec::im_key_id(&k, 1).map_err(corrupt("fan-out mode key"))?;
                        Ok((seq, v.first() == Some(&1)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                conversation = Some((shard, id, state, modes));
            }
            let Some((_, _, state, modes)) = conversation.as_ref() else {
                break;
            };
            if state.is_managed() {
                let entry = MemberEntry::decode(value).map_err(corrupt("member entry"))?;
                let last = entry.visible_last(state.last_seq);
                let former_activity_ms =
                    if entry.is_current() || last == 0 || last < state.first_retained() {
                        0
                    } else {
                        let (messages, _) = crate::read::forward(&self.shard(shard), id, last, 1)?;
                        messages
                            .iter()
                            .find(|m| m.seq == last)
                            .map_or(0, |m| m.timestamp_ms)
                    };
                let view = UserView::of(
                    state,
                    &entry,
                    |seq| codec::fanned_at(modes, seq),
                    state.member_count <= fanout_max_members,
                    former_activity_ms,
                );
                let index = if view.remote {
                    im_key(tag::REMOTE_VIEW, &[user, id], &[])
                } else {
                    codec::activity_key(user, view.last_activity_ms, id)
                };
                batch.put_cf(im, shard_key(shard, &index), []);
                batch.put_cf(
                    im,
                    shard_key(shard, &im_key(tag::VIEW, &[user, id], &[])),
                    view.encode(),
                );
                written += 1;
                if batch.len() >= BATCH_ROWS {
                    self.db.write(std::mem::take(&mut batch))?;
                    tracing::info!(written, "upgrade: user views written");
                }
            }
            it.next();
        }
        it.status()?;
        drop(it);
        self.finish_upgrade(batch, FORMAT_VERSION)?;
        tracing::info!(written, "upgrade: user views done");
        Ok(())
    }

    /// Format 7 to 9 and 8 to 9: block lists (format 8) are new rows and
    /// a new outbox effect, conversation settings (format 9) new rows;
    /// nothing older changes, so only the version is written (on any
    /// number of shards).
    pub(super) fn upgrade_new_rows_only(&self, path: &Path, from: u32) -> Result<()> {
        tracing::info!(path = %path.display(), from, to = FORMAT_VERSION, "upgrading the data directory: block lists and conversation settings (nothing to rewrite)");
        self.finish_upgrade(WriteBatch::default(), FORMAT_VERSION)
    }

    /// A raw iterator over the whole `im` column family, at its start.
    fn scan_im_from_start(&self) -> Result<rocksdb::DBRawIterator<'_>> {
        let mut ro = ReadOptions::default();
        ro.set_total_order_seek(true);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_IM)?, ro);
        it.seek_to_first();
        Ok(it)
    }

    /// Writes the last batch of an upgrade with the new format version,
    /// synced.
    fn finish_upgrade(&self, mut batch: WriteBatch, version: u32) -> Result<()> {
        batch.put_cf(
            self.cf(CF_META)?,
            store_wide_key(META_FORMAT_VERSION),
            version.to_be_bytes(),
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// The copy a format 3 pointer stands for, as its user saw it.
    fn copy_of(&self, shard: u16, user: u64, entry: InboxEntry) -> Result<InboxCopy> {
        let view = self.shard(shard);
        let (messages, _) = crate::read::forward(&view, entry.conversation, entry.seq, 1)?;
        let Some(message) = messages.into_iter().find(|m| m.seq == entry.seq) else {
            // Cleared by retention: the row stays (its inbox seq does).
            return Ok(InboxCopy {
                conversation: entry.conversation,
                seq: entry.seq,
                cleared: true,
                ..InboxCopy::default()
            });
        };
        let mut copy = InboxCopy {
            conversation: entry.conversation,
            seq: entry.seq,
            sender: message.sender,
            timestamp_ms: message.timestamp_ms,
            client_msg_id: message.client_msg_id.to_vec(),
            payload: message.payload.to_vec(),
            ..InboxCopy::default()
        };
        let overlay_key = im_key(tag::OVERLAY, &[entry.conversation, entry.seq], &[]);
        if let Some(bytes) = view.get_in(CF_IM, &overlay_key)? {
            copy.apply_overlay(&OverlayEntry::decode(&bytes).map_err(corrupt("overlay entry"))?);
        }
        let hidden_key = im_key(tag::HIDDEN, &[user, entry.conversation, entry.seq], &[]);
        if view.get_in(CF_IM, &hidden_key)?.is_some() {
            copy.hide();
        }
        Ok(copy)
    }
}

/// Refuses, untouched, to upgrade the data of a cluster of several
/// shards from format `found`: the user's `what` moves to the user's
/// shard, which takes the cluster, not one replica.
fn refuse_on_many_shards(path: &Path, placement_shards: u64, found: u32, what: &str) -> Result<()> {
    if placement_shards <= 1 {
        return Ok(());
    }
    tracing::error!(
        path = %path.display(),
        "format {found} data of a cluster with {placement_shards} shards cannot be upgraded \
         in place: a user's {what} moves to the user's shard. Back up with the old release \
         and load the data into a new cluster (docs/replication.md, \"Upgrading\")"
    );
    Err(Error::UnsupportedFormat {
        found,
        supported: FORMAT_VERSION,
    })
}

/// The fan-out mode rows of a conversation whose fanned-out seqs are
/// `seqs` (ascending, distinct) and whose last seq is `last_seq`: (first
/// seq, fanned out) wherever the mode changes, starting at seq 1. Every
/// other seq up to `last_seq` was sent without fan-out.
fn mode_changes(seqs: &[u64], last_seq: u64) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    let mut next = 1;
    for &seq in seqs {
        if seq != next {
            out.push((next, false));
        }
        if out.last().is_none_or(|&(_, fanned)| !fanned) {
            out.push((seq, true));
        }
        next = seq + 1;
    }
    if next <= last_seq && !seqs.is_empty() {
        out.push((next, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mode_changes;

    #[test]
    fn runs_of_fanned_out_seqs_become_mode_rows() {
        assert_eq!(mode_changes(&[], 9), vec![]);
        assert_eq!(mode_changes(&[1, 2, 3], 3), vec![(1, true)]);
        assert_eq!(mode_changes(&[1, 2, 3], 5), vec![(1, true), (4, false)]);
        assert_eq!(
            mode_changes(&[3, 4, 8], 8),
            vec![(1, false), (3, true), (5, false), (8, true)]
        );
        assert_eq!(
            mode_changes(&[1, 5], 7),
            vec![(1, true), (2, false), (5, true), (6, false)]
        );
    }
}
