//! The deterministic apply step: commands in, one WriteBatch out.
//!
//! Given the same committed state and the same commands, [`GroupApplier`]
//! produces the same outcomes and the same batch on every machine: it reads
//! no clock, no randomness and no thread-local state. The commit pipeline
//! uses it now; the raft state machine will use it for committed entries.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use rocksdb::WriteBatch;

use crate::codec::{self, ConversationState, DedupEntry, RecordRef};
use crate::store::{shard_key, ShardId, Store, CF_CONVERSATIONS, CF_DEDUP, CF_META, CF_SEGMENTS};
use crate::store::{CF_IM, CF_RECEIPTS, META_CHANGE_COUNTER};
use crate::{Appended, Command, Error, Message, NewMessage, Options, Outcome, Result};

/// Granularity at which the timestamp high-water mark is persisted.
const HIGH_WATER_STEP_MS: u64 = 60_000;

/// Where the applier reads committed state from. The commit pipeline backs
/// it with an LRU of conversation states over the store.
pub(crate) trait CommittedState {
    fn conversation(&mut self, conversation: u64) -> Result<ConversationState>;
    fn dedup(&mut self, key: &[u8]) -> Result<Option<DedupEntry>>;
    /// A committed value of the `im` or `receipts` column family.
    fn get(&mut self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Committed entries with `lo <= key < hi`, ascending.
    fn scan(&mut self, space: Space, lo: &[u8], hi: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// A committed message (for recall and edit checks).
    fn message(&mut self, conversation: u64, seq: u64) -> Result<Option<Message>>;
    /// Base of the committed segment holding `seq` (the greatest base ≤ seq).
    fn segment_base(&mut self, conversation: u64, seq: u64) -> Result<Option<u64>>;
    /// The user's committed inbox head (0 for an empty inbox).
    fn inbox_last(&mut self, user: u64) -> Result<u64>;
}

/// The column families apply reads and writes generically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Space {
    Im,
    Receipts,
    Segments,
    Conversations,
    Dedup,
    Meta,
}

/// One row of a store image: column family, key, value.
pub(crate) type Row = (Space, Vec<u8>, Vec<u8>);

impl Space {
    /// Every column family, in the order `Store::export` numbers them.
    pub(crate) const ALL: [Space; 6] = [
        Space::Segments,
        Space::Conversations,
        Space::Dedup,
        Space::Meta,
        Space::Im,
        Space::Receipts,
    ];
}

/// The limits apply enforces; the subset of [`Options`] that decides outcomes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApplyLimits {
    pub segment_max_records: u32,
    pub segment_max_bytes: u32,
    pub max_payload_bytes: usize,
    pub max_client_msg_id_bytes: usize,
    pub max_batch_messages: usize,
    pub dedup_window_ms: u64,
    pub fanout_max_members: u32,
    pub receipt_list_max_members: u32,
    pub recall_window_ms: u64,
    pub edit_window_ms: u64,
    pub max_group_members: u32,
    pub max_users_per_command: usize,
    pub max_device_id_bytes: usize,
    pub placement_shards: u64,
}

impl From<&Options> for ApplyLimits {
    fn from(o: &Options) -> Self {
        ApplyLimits {
            segment_max_records: o.segment_max_records.max(1),
            segment_max_bytes: o.segment_max_bytes,
            max_payload_bytes: o.max_payload_bytes,
            max_client_msg_id_bytes: o.max_client_msg_id_bytes.min(u16::MAX as usize),
            max_batch_messages: o.max_batch_messages,
            dedup_window_ms: o.dedup_window_ms,
            fanout_max_members: o.fanout_max_members,
            receipt_list_max_members: o.receipt_list_max_members,
            recall_window_ms: o.recall_window_ms,
            edit_window_ms: o.edit_window_ms,
            max_group_members: o.max_group_members,
            max_users_per_command: o.max_users_per_command,
            max_device_id_bytes: o.max_device_id_bytes,
            placement_shards: o.placement_shards.max(1),
        }
    }
}

mod blocks;
mod delivery;
mod friends;
mod history;
mod im;
mod image;
mod membership;
mod overlays;
mod reactions;
mod reads;
mod send;
mod settings;
mod views;
#[cfg(feature = "replication")]
pub use image::push_image_meta_row;

/// Changes made by the commands applied so far in one group, not yet written.
#[derive(Default)]
pub(crate) struct Pending {
    conversations: BTreeMap<u64, ConversationState>,
    dedup: BTreeMap<Vec<u8>, DedupEntry>,
    /// Records to append, per (conversation, segment base), in seq order.
    segments: BTreeMap<(u64, u64), Vec<u8>>,
    /// The appended messages per conversation, for the tail cache.
    appended: BTreeMap<u64, Vec<Message>>,
    max_timestamp_ms: u64,
    new_messages: u64,
    /// Puts, deletes and merges of the `im` and `receipts` column families.
    kv: BTreeMap<(Space, Vec<u8>), KvEntry>,
    /// Range deletions, written after everything else of the group.
    range_deletes: Vec<(Space, Vec<u8>, Vec<u8>)>,
    /// Conversations whose history was cleared (their tail cache goes).
    cleared: BTreeSet<u64>,
    /// The store's change counter after this group, if it moved.
    change: Option<u64>,
    /// (user, conversation) memberships opened, for push subscribers.
    joined: Vec<(u64, u64)>,
    /// (user, conversation) views that became remote through a delivery.
    late_remote_views: Vec<(u64, u64)>,
    /// The new inbox head of every user who got a copy.
    inbox_heads: BTreeMap<u64, u64>,
    /// Users who got a copy of a conversation they have not muted.
    loud_inboxes: BTreeSet<u64>,
    /// (conversation, seq) of messages whose reactions changed.
    reacted: Vec<(u64, u64)>,
    /// Effects for users of other shards, per destination shard, written
    /// to the outbox when the command ends.
    outgoing: BTreeMap<u64, Vec<codec::Effect>>,
    /// An outbox record was written.
    outbox_written: bool,
    /// (conversation, user) views this command changed, sent as
    /// [`codec::Effect::View`] when it ends.
    touched_views: BTreeSet<(u64, u64)>,
    /// A store image replacing everything ([`Command::ReplaceState`]).
    replace: Option<Vec<Row>>,
    /// Image rows added to the shard ([`Command::AddImageRows`]).
    loaded: Vec<Row>,
    /// The last part of an image was added: every cache must go.
    reload: bool,
}

/// Pending writes to one key: an optional put (`Some(Some)`) or delete
/// (`Some(None)`), then merge operands in order.
#[derive(Default, Clone)]
pub(crate) struct KvEntry {
    base: Option<Option<Vec<u8>>>,
    merges: Vec<Vec<u8>>,
}

impl Pending {
    /// Folds a command's scratch changes into the group.
    fn absorb(&mut self, scratch: Pending) {
        self.conversations.extend(scratch.conversations);
        self.dedup.extend(scratch.dedup);
        for (key, bytes) in scratch.segments {
            match self.segments.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(bytes);
                }
                Entry::Occupied(mut slot) => slot.get_mut().extend_from_slice(&bytes),
            }
        }
        for (conversation, messages) in scratch.appended {
            self.appended
                .entry(conversation)
                .or_default()
                .extend(messages);
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(scratch.max_timestamp_ms);
        self.new_messages += scratch.new_messages;
        for (key, entry) in scratch.kv {
            match self.kv.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(entry);
                }
                Entry::Occupied(mut slot) => {
                    let group = slot.get_mut();
                    if entry.base.is_some() {
                        *group = entry;
                    } else {
                        group.merges.extend(entry.merges);
                    }
                }
            }
        }
        self.range_deletes.extend(scratch.range_deletes);
        self.cleared.extend(scratch.cleared);
        if scratch.change.is_some() {
            self.change = scratch.change;
        }
        self.joined.extend(scratch.joined);
        self.late_remote_views.extend(scratch.late_remote_views);
        for (user, head) in scratch.inbox_heads {
            let slot = self.inbox_heads.entry(user).or_default();
            *slot = (*slot).max(head);
        }
        self.loud_inboxes.extend(scratch.loud_inboxes);
        self.reacted.extend(scratch.reacted);
        self.outbox_written |= scratch.outbox_written;
        if scratch.replace.is_some() {
            self.replace = scratch.replace;
        }
        self.loaded.extend(scratch.loaded);
        self.reload |= scratch.reload;
    }
}

/// Applies a group of commands over committed state, each atomically.
pub(crate) struct GroupApplier<'a, S: CommittedState> {
    state: &'a mut S,
    limits: ApplyLimits,
    /// The shard applied to: effects for its users apply at once.
    shard: ShardId,
    group: Pending,
    /// The committed change counter.
    change_base: u64,
}

impl<'a, S: CommittedState> GroupApplier<'a, S> {
    pub(crate) fn new(
        state: &'a mut S,
        limits: ApplyLimits,
        shard: ShardId,
        change_base: u64,
    ) -> Self {
        GroupApplier {
            state,
            limits,
            shard,
            group: Pending::default(),
            change_base,
        }
    }

    /// Applies one command. On error nothing of this command is kept, and
    /// the commands applied before it in the group are unaffected.
    pub(crate) fn apply(&mut self, command: &Command) -> Result<Outcome> {
        self.apply_unlabelled(command)
            .map_err(|e| match command.conversation() {
                Some(c) => e.in_conversation(c, None),
                None => e,
            })
    }

    fn apply_unlabelled(&mut self, command: &Command) -> Result<Outcome> {
        if let Command::Append(messages) = command {
            return self.append(messages).map(Outcome::Appended);
        }
        // Every other command works on a scratch overlay, folded into the
        // group only when the whole command succeeded.
        let mut scratch = Pending::default();
        let outcome = self.apply_im(&mut scratch, command)?;
        self.write_views(&mut scratch)?;
        self.write_outgoing(&mut scratch)?;
        self.group.absorb(scratch);
        Ok(outcome)
    }

    fn append(&mut self, messages: &[NewMessage]) -> Result<Vec<Appended>> {
        self.validate(messages)?;
        // Work on a scratch copy of what this command touches, so a failure
        // half-way leaves the group as it was.
        let mut scratch = Pending::default();
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            if self
                .conversation(&scratch, message.conversation)?
                .is_managed()
            {
                return Err(Error::ManagedConversation {
                    conversation: message.conversation,
                });
            }
            results.push(self.append_one(&mut scratch, message)?);
        }
        self.group.absorb(scratch);
        Ok(results)
    }

    pub(crate) fn validate(&self, messages: &[NewMessage]) -> Result<()> {
        let limits = &self.limits;
        if messages.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if messages.len() > limits.max_batch_messages {
            return Err(Error::BatchTooLarge {
                len: messages.len(),
                max: limits.max_batch_messages,
            });
        }
        for m in messages {
            if m.payload.len() > limits.max_payload_bytes {
                return Err(Error::PayloadTooLarge {
                    len: m.payload.len(),
                    max: limits.max_payload_bytes,
                });
            }
            if m.client_msg_id.is_empty() {
                return Err(Error::InvalidArgument("client_msg_id is empty".into()));
            }
            if m.client_msg_id.len() > limits.max_client_msg_id_bytes {
                return Err(Error::InvalidArgument(format!(
                    "client_msg_id of {} bytes is over the limit of {}",
                    m.client_msg_id.len(),
                    limits.max_client_msg_id_bytes
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn conversation(
        &mut self,
        scratch: &Pending,
        conversation: u64,
    ) -> Result<ConversationState> {
        if let Some(s) = scratch.conversations.get(&conversation) {
            return Ok(*s);
        }
        if let Some(s) = self.group.conversations.get(&conversation) {
            return Ok(*s);
        }
        self.state.conversation(conversation)
    }

    pub(crate) fn dedup(&mut self, scratch: &Pending, key: &[u8]) -> Result<Option<DedupEntry>> {
        if let Some(e) = scratch.dedup.get(key) {
            return Ok(Some(*e));
        }
        if let Some(e) = self.group.dedup.get(key) {
            return Ok(Some(*e));
        }
        self.state.dedup(key)
    }

    pub(crate) fn append_one(&mut self, scratch: &mut Pending, m: &NewMessage) -> Result<Appended> {
        let dedup_key = codec::dedup_key(m.conversation, m.sender, &m.client_msg_id);
        match self.retry_of(scratch, m, &dedup_key)? {
            Some(original) => Ok(original),
            None => self.append_new(scratch, m, dedup_key),
        }
    }

    /// The earlier append `m` retries (same conversation, sender and client
    /// message id within the dedup window): its seq, and nothing to write.
    pub(crate) fn retry_of(
        &mut self,
        scratch: &Pending,
        m: &NewMessage,
        dedup_key: &[u8],
    ) -> Result<Option<Appended>> {
        Ok(self.dedup(scratch, dedup_key)?.and_then(|entry| {
            let window_end = entry
                .timestamp_ms
                .saturating_add(self.limits.dedup_window_ms);
            (m.timestamp_ms <= window_end).then_some(Appended {
                seq: entry.seq,
                duplicate: true,
            })
        }))
    }

    /// Appends `m`, which [`GroupApplier::retry_of`] found is no retry,
    /// recording it under `dedup_key`.
    pub(crate) fn append_new(
        &mut self,
        scratch: &mut Pending,
        m: &NewMessage,
        dedup_key: Vec<u8>,
    ) -> Result<Appended> {
        let mut state = self.conversation(scratch, m.conversation)?;
        let seq = state.last_seq.checked_add(1).ok_or(Error::SeqExhausted {
            conversation: m.conversation,
        })?;
        let framed = codec::framed_len(m.client_msg_id.len(), m.payload.len());
        let framed_u32 = u32::try_from(framed).unwrap_or(u32::MAX);
        let full = state.open_records >= self.limits.segment_max_records
            || (state.open_records > 0
                && state.open_bytes.saturating_add(framed_u32) > self.limits.segment_max_bytes);
        if state.open_records == 0 || full {
            // Seal the open segment (by leaving it) and start a new one.
            state.open_base = seq;
            state.open_records = 0;
            state.open_bytes = 0;
        }
        state.last_seq = seq;
        state.open_records += 1;
        state.open_bytes = state.open_bytes.saturating_add(framed_u32);
        state.last_timestamp_ms = m.timestamp_ms;

        let out = scratch
            .segments
            .entry((m.conversation, state.open_base))
            .or_default();
        codec::encode_record(
            out,
            &RecordRef {
                seq,
                timestamp_ms: m.timestamp_ms,
                sender: m.sender,
                client_msg_id: &m.client_msg_id,
                payload: &m.payload,
            },
        );
        scratch.conversations.insert(m.conversation, state);
        scratch.dedup.insert(
            dedup_key,
            DedupEntry {
                seq,
                timestamp_ms: m.timestamp_ms,
            },
        );
        scratch
            .appended
            .entry(m.conversation)
            .or_default()
            .push(Message {
                conversation: m.conversation,
                seq,
                sender: m.sender,
                timestamp_ms: m.timestamp_ms,
                client_msg_id: m.client_msg_id.clone(),
                payload: m.payload.clone(),
            });
        scratch.max_timestamp_ms = scratch.max_timestamp_ms.max(m.timestamp_ms);
        scratch.new_messages += 1;
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    /// Writes the group's changes into `batch`: one merge per touched
    /// segment, one put per touched conversation and per new dedup entry.
    /// Returns what the write changes, for the caller to publish once the
    /// batch is durable.
    pub(crate) fn finish(
        self,
        store: &Store,
        shard: ShardId,
        high_water: u64,
        batch: &mut WriteBatch,
    ) -> Result<GroupEffects> {
        let group = self.group;
        let key = |k: &[u8]| shard_key(shard, k);
        let segments = store.cf(CF_SEGMENTS)?;
        let conversations = store.cf(CF_CONVERSATIONS)?;
        let dedup = store.cf(CF_DEDUP)?;
        for ((conversation, base), bytes) in &group.segments {
            batch.merge_cf(
                segments,
                key(&codec::segment_key(*conversation, *base)),
                bytes,
            );
        }
        for (conversation, state) in &group.conversations {
            batch.put_cf(
                conversations,
                key(&codec::conversation_key(*conversation)),
                state.encode(),
            );
        }
        for (k, entry) in &group.dedup {
            batch.put_cf(dedup, key(k), entry.encode());
        }
        let im = store.cf(CF_IM)?;
        let receipts = store.cf(CF_RECEIPTS)?;
        let meta = store.cf(CF_META)?;
        let cf_of = |space: Space| match space {
            Space::Im => im,
            Space::Receipts => receipts,
            Space::Segments => segments,
            Space::Conversations => conversations,
            Space::Dedup => dedup,
            Space::Meta => meta,
        };
        if let Some(records) = &group.replace {
            // A whole new shard: everything of it goes, then the image's rows.
            store.delete_shard(shard, batch)?;
            for (space, k, value) in records {
                batch.put_cf(cf_of(*space), key(k), value);
            }
        }
        for (space, k, value) in &group.loaded {
            batch.put_cf(cf_of(*space), key(k), value);
        }
        for ((space, k), entry) in &group.kv {
            let cf = cf_of(*space);
            let k = key(k);
            match &entry.base {
                Some(Some(value)) => batch.put_cf(cf, &k, value),
                Some(None) => batch.delete_cf(cf, &k),
                None => {}
            }
            for operand in &entry.merges {
                batch.merge_cf(cf, &k, operand);
            }
        }
        // Last, so that they also remove what earlier commands of this
        // group wrote below the cut (later commands never write below it).
        for (space, from, to) in &group.range_deletes {
            batch.delete_range_cf(cf_of(*space), key(from), key(to));
        }
        if let Some(change) = group.change {
            batch.put_cf(
                store.cf(CF_META)?,
                key(META_CHANGE_COUNTER),
                change.to_be_bytes(),
            );
        }
        let new_high_water = high_water.max(group.max_timestamp_ms);
        // Persisted once per minute of server time, not once per group: after
        // a restart the mark may lag by up to a minute, which only makes
        // dedup GC (48 h horizon by default) that much more conservative.
        if new_high_water / HIGH_WATER_STEP_MS > high_water / HIGH_WATER_STEP_MS {
            batch.put_cf(
                store.cf(CF_META)?,
                Store::high_water_key(),
                new_high_water.to_be_bytes(),
            );
        }
        Ok(GroupEffects {
            conversations: group.conversations,
            appended: group.appended,
            timestamp_high_water: new_high_water,
            new_messages: group.new_messages,
            inbox_heads: group.inbox_heads,
            loud_inboxes: group.loud_inboxes,
            reacted: group.reacted,
            outbox_written: group.outbox_written,
            cleared: group.cleared,
            change: group.change,
            joined: group.joined,
            remote_views: group.late_remote_views,
            replaced: group.replace.is_some() || group.reload,
        })
    }
}

/// What a group's write changes, published once the write is durable.
pub(crate) struct GroupEffects {
    pub conversations: BTreeMap<u64, ConversationState>,
    pub appended: BTreeMap<u64, Vec<Message>>,
    pub timestamp_high_water: u64,
    pub new_messages: u64,
    pub cleared: BTreeSet<u64>,
    pub change: Option<u64>,
    /// The new inbox head of every user who got inbox entries.
    pub inbox_heads: BTreeMap<u64, u64>,
    /// Those of them who got a copy of a conversation they have not muted.
    pub loud_inboxes: BTreeSet<u64>,
    /// (conversation, seq) of messages whose reactions changed.
    pub reacted: Vec<(u64, u64)>,
    /// (user, conversation) memberships opened.
    pub joined: Vec<(u64, u64)>,
    /// (user, conversation) views that became remote through a delivery.
    pub remote_views: Vec<(u64, u64)>,
    /// An outbox record was written: the shard has effects to deliver.
    pub outbox_written: bool,
    /// The whole store was replaced: every cache must go.
    pub replaced: bool,
}
