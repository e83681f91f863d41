//! The deterministic apply step: commands in, one WriteBatch out.
//!
//! Given the same committed state and the same commands, [`GroupApplier`]
//! produces the same outcomes and the same batch on every machine: it reads
//! no clock, no randomness and no thread-local state. The commit pipeline
//! uses it now; the raft state machine will use it for committed entries.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use rocksdb::WriteBatch;

use crate::codec::{self, ConversationState, DedupEntry, RecordRef};
use crate::store::META_TIMESTAMP_HIGH_WATER;
use crate::store::{Store, CF_CONVERSATIONS, CF_DEDUP, CF_META, CF_SEGMENTS};
use crate::{Appended, Command, Error, Message, NewMessage, Options, Outcome, Result};

/// Granularity at which the timestamp high-water mark is persisted.
const HIGH_WATER_STEP_MS: u64 = 60_000;

/// Where the applier reads committed state from. The commit pipeline backs
/// it with an LRU of conversation states over the store.
pub(crate) trait CommittedState {
    fn conversation(&mut self, conversation: u64) -> Result<ConversationState>;
    fn dedup(&mut self, key: &[u8]) -> Result<Option<DedupEntry>>;
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
        }
    }
}

/// Changes made by the commands applied so far in one group, not yet written.
#[derive(Default)]
struct Pending {
    conversations: BTreeMap<u64, ConversationState>,
    dedup: BTreeMap<Vec<u8>, DedupEntry>,
    /// Records to append, per (conversation, segment base), in seq order.
    segments: BTreeMap<(u64, u64), Vec<u8>>,
    /// The appended messages per conversation, for the tail cache.
    appended: BTreeMap<u64, Vec<Message>>,
    max_timestamp_ms: u64,
    new_messages: u64,
}

/// Applies a group of commands over committed state, each atomically.
pub(crate) struct GroupApplier<'a, S: CommittedState> {
    state: &'a mut S,
    limits: ApplyLimits,
    group: Pending,
}

impl<'a, S: CommittedState> GroupApplier<'a, S> {
    pub(crate) fn new(state: &'a mut S, limits: ApplyLimits) -> Self {
        GroupApplier {
            state,
            limits,
            group: Pending::default(),
        }
    }

    /// Applies one command. On error nothing of this command is kept, and
    /// the commands applied before it in the group are unaffected.
    pub(crate) fn apply(&mut self, command: &Command) -> Result<Outcome> {
        match command {
            Command::Append(messages) => self.append(messages).map(Outcome::Appended),
        }
    }

    fn append(&mut self, messages: &[NewMessage]) -> Result<Vec<Appended>> {
        self.validate(messages)?;
        // Work on a scratch copy of what this command touches, so a failure
        // half-way leaves the group as it was.
        let mut scratch = Pending::default();
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.append_one(&mut scratch, message)?);
        }
        let group = &mut self.group;
        group.conversations.extend(scratch.conversations);
        group.dedup.extend(scratch.dedup);
        for (key, bytes) in scratch.segments {
            match group.segments.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(bytes);
                }
                Entry::Occupied(mut slot) => slot.get_mut().extend_from_slice(&bytes),
            }
        }
        for (conversation, messages) in scratch.appended {
            group
                .appended
                .entry(conversation)
                .or_default()
                .extend(messages);
        }
        group.max_timestamp_ms = group.max_timestamp_ms.max(scratch.max_timestamp_ms);
        group.new_messages += scratch.new_messages;
        Ok(results)
    }

    fn validate(&self, messages: &[NewMessage]) -> Result<()> {
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

    fn conversation(&mut self, scratch: &Pending, conversation: u64) -> Result<ConversationState> {
        if let Some(s) = scratch.conversations.get(&conversation) {
            return Ok(*s);
        }
        if let Some(s) = self.group.conversations.get(&conversation) {
            return Ok(*s);
        }
        self.state.conversation(conversation)
    }

    fn dedup(&mut self, scratch: &Pending, key: &[u8]) -> Result<Option<DedupEntry>> {
        if let Some(e) = scratch.dedup.get(key) {
            return Ok(Some(*e));
        }
        if let Some(e) = self.group.dedup.get(key) {
            return Ok(Some(*e));
        }
        self.state.dedup(key)
    }

    fn append_one(&mut self, scratch: &mut Pending, m: &NewMessage) -> Result<Appended> {
        let dedup_key = codec::dedup_key(m.conversation, m.sender, &m.client_msg_id);
        if let Some(entry) = self.dedup(scratch, &dedup_key)? {
            if m.timestamp_ms
                <= entry
                    .timestamp_ms
                    .saturating_add(self.limits.dedup_window_ms)
            {
                return Ok(Appended {
                    seq: entry.seq,
                    duplicate: true,
                });
            }
        }

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
        high_water: u64,
        batch: &mut WriteBatch,
    ) -> Result<GroupEffects> {
        let group = self.group;
        let segments = store.cf(CF_SEGMENTS)?;
        let conversations = store.cf(CF_CONVERSATIONS)?;
        let dedup = store.cf(CF_DEDUP)?;
        for ((conversation, base), bytes) in &group.segments {
            batch.merge_cf(segments, codec::segment_key(*conversation, *base), bytes);
        }
        for (conversation, state) in &group.conversations {
            batch.put_cf(
                conversations,
                codec::conversation_key(*conversation),
                state.encode(),
            );
        }
        for (key, entry) in &group.dedup {
            batch.put_cf(dedup, key, entry.encode());
        }
        let new_high_water = high_water.max(group.max_timestamp_ms);
        // Persisted once per minute of server time, not once per group: after
        // a restart the mark may lag by up to a minute, which only makes
        // dedup GC (48 h horizon by default) that much more conservative.
        if new_high_water / HIGH_WATER_STEP_MS > high_water / HIGH_WATER_STEP_MS {
            batch.put_cf(
                store.cf(CF_META)?,
                META_TIMESTAMP_HIGH_WATER,
                new_high_water.to_be_bytes(),
            );
        }
        Ok(GroupEffects {
            conversations: group.conversations,
            appended: group.appended,
            timestamp_high_water: new_high_water,
            new_messages: group.new_messages,
        })
    }
}

/// What a group's write changes, published once the write is durable.
pub(crate) struct GroupEffects {
    pub conversations: BTreeMap<u64, ConversationState>,
    pub appended: BTreeMap<u64, Vec<Message>>,
    pub timestamp_high_water: u64,
    pub new_messages: u64,
}

impl GroupEffects {
    pub(crate) fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }
}
