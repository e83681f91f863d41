//! `ShardView`: reads of one shard of a store, and its export as an image.

use super::*;

/// Reads of one shard of a store: every key is given and returned without
/// the shard prefix.
#[derive(Clone, Copy)]
pub(crate) struct ShardView<'a> {
    pub(super) store: &'a Store,
    pub(super) shard: ShardId,
}

impl<'a> ShardView<'a> {
    pub(crate) fn id(&self) -> ShardId {
        self.shard
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        shard_key(self.shard, key)
    }

    pub(crate) fn conversation_state(&self, conversation: u64) -> Result<ConversationState> {
        let store = self.store;
        let cf = store.cf(CF_CONVERSATIONS)?;
        match store
            .db
            .get_pinned_cf(cf, self.key(&codec::conversation_key(conversation)))?
        {
            Some(v) => ConversationState::decode(&v).map_err(|reason| Error::CorruptMetadata {
                what: "conversation state".into(),
                reason,
            }),
            None => Ok(ConversationState::default()),
        }
    }

    /// A value of one column family.
    pub(crate) fn get_in(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.store.db.get_cf(self.store.cf(cf)?, self.key(key))?)
    }

    /// Values of many keys of one column family, in the keys' order,
    /// each passed to `decode` straight from RocksDB's pinned buffer.
    /// `sorted` says the keys are in ascending order (RocksDB skips a sort).
    pub(crate) fn multi_get_in<T>(
        &self,
        cf: &'static str,
        keys: &[Vec<u8>],
        sorted: bool,
        mut decode: impl FnMut(Option<&[u8]>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        self.store
            .db
            .batched_multi_get_cf(self.store.cf(cf)?, keys.iter(), sorted)
            .into_iter()
            .map(|r| decode(r?.as_deref()))
            .collect()
    }

    /// States of many conversations, in the given order (ascending if
    /// `sorted`).
    pub(crate) fn conversation_states(
        &self,
        conversations: &[u64],
        sorted: bool,
    ) -> Result<Vec<ConversationState>> {
        let keys: Vec<Vec<u8>> = conversations
            .iter()
            .map(|c| codec::conversation_key(*c).to_vec())
            .collect();
        self.multi_get_in(CF_CONVERSATIONS, &keys, sorted, |v| match v {
            Some(v) => ConversationState::decode(v).map_err(|reason| Error::CorruptMetadata {
                what: "conversation state".into(),
                reason,
            }),
            None => Ok(ConversationState::default()),
        })
    }

    /// Entries with `lo <= key < hi`, ascending, at most `limit`.
    pub(crate) fn scan_in(
        &self,
        cf: &'static str,
        lo: &[u8],
        hi: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(self.key(hi));
        let mut it = self.store.db.raw_iterator_cf_opt(self.store.cf(cf)?, ro);
        it.seek(self.key(lo));
        let mut out = Vec::new();
        while out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            out.push((k[SHARD_PREFIX_LEN..].to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The greatest entry with `lo <= key <= at`, if any.
    pub(crate) fn last_in(
        &self,
        cf: &'static str,
        lo: &[u8],
        at: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let lower = self.key(lo);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        let mut it = self.store.db.raw_iterator_cf_opt(self.store.cf(cf)?, ro);
        it.seek_for_prev(self.key(at));
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k >= lower.as_slice() => {
                Ok(Some((k[SHARD_PREFIX_LEN..].to_vec(), v.to_vec())))
            }
            _ => {
                it.status()?;
                Ok(None)
            }
        }
    }

    /// The newest inbox seq of `user`: the id in their last inbox key.
    pub(crate) fn inbox_last(&self, user: u64) -> Result<u64> {
        let lower = self.key(&codec::im_key(codec::tag::INBOX, &[user], &[]));
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.clone());
        let mut it = self.store.db.raw_iterator_cf_opt(self.store.cf(CF_IM)?, ro);
        it.seek_for_prev(self.key(&codec::im_key(codec::tag::INBOX, &[user, u64::MAX], &[])));
        match it.key() {
            Some(key) if key.starts_with(&lower) => codec::im_key_id(&key[SHARD_PREFIX_LEN..], 1)
                .map_err(|reason| Error::CorruptMetadata {
                    what: "inbox key".into(),
                    reason,
                }),
            _ => {
                it.status()?;
                Ok(0)
            }
        }
    }

    /// An iterator over `conversation`'s segments (keys with the shard
    /// prefix: strip [`SHARD_PREFIX_LEN`] bytes).
    pub(crate) fn segment_iterator(&self, conversation: u64) -> Result<DBRawIterator<'a>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(self.key(&codec::segment_key(conversation, 0)));
        ro.set_iterate_upper_bound(match conversation.checked_add(1) {
            Some(next) => self.key(&codec::segment_key(next, 0)),
            None => shard_end(self.shard),
        });
        Ok(self
            .store
            .db
            .raw_iterator_cf_opt(self.store.cf(CF_SEGMENTS)?, ro))
    }

    /// The segment key `conversation`, `seq` under this shard's prefix.
    pub(crate) fn segment_key(&self, conversation: u64, seq: u64) -> Vec<u8> {
        self.key(&codec::segment_key(conversation, seq))
    }

    /// Base of the stored segment holding `seq` of `conversation`.
    pub(crate) fn segment_base(&self, conversation: u64, seq: u64) -> Result<Option<u64>> {
        let mut it = self.segment_iterator(conversation)?;
        it.seek_for_prev(self.segment_key(conversation, seq));
        let Some(key) = it.key() else {
            it.status()?;
            return Ok(None);
        };
        let (c, base) = codec::parse_segment_key(&key[SHARD_PREFIX_LEN..]).map_err(|reason| {
            Error::CorruptMetadata {
                what: "segment key".into(),
                reason,
            }
        })?;
        Ok((c == conversation).then_some(base))
    }

    pub(crate) fn dedup_entry(&self, key: &[u8]) -> Result<Option<DedupEntry>> {
        let cf = self.store.cf(CF_DEDUP)?;
        match self.store.db.get_pinned_cf(cf, self.key(key))? {
            Some(v) => DedupEntry::decode(&v)
                .map(Some)
                .map_err(|reason| Error::CorruptMetadata {
                    what: "dedup entry".into(),
                    reason,
                }),
            None => Ok(None),
        }
    }

    /// Writes a consistent image of this shard (one RocksDB snapshot, keys
    /// without the shard prefix) to `out`, streaming: memory stays bounded
    /// by one row. The image leaves out `raft/` metadata; those rows, read
    /// from the same snapshot, are returned instead, so a raft snapshot's
    /// applied state matches its data exactly. Layout: `IMSTATE1`, then
    /// per row the column family's index (u8), key length (u32 BE), key,
    /// value length (u32 BE), value.
    pub(crate) fn export_to(&self, out: &mut dyn std::io::Write) -> Result<StateExport> {
        let export = self.export_if(out, &mut |_| true)?;
        export.ok_or_else(|| Error::Storage("an unconditional export was declined".into()))
    }

    /// [`ShardView::export_to`], but first shows `proceed` the `raft/`
    /// rows of the RocksDB snapshot the image will come from, and writes
    /// nothing (returning `None`) unless it answers `true`: a raft replica
    /// learns what a snapshot covers at once and streams the image only if
    /// a follower still wants it.
    pub(crate) fn export_if(
        &self,
        out: &mut dyn std::io::Write,
        proceed: &mut dyn FnMut(&[MetaRow]) -> bool,
    ) -> Result<Option<StateExport>> {
        let io = |e: std::io::Error| Error::Storage(format!("writing a store image: {e}"));
        let snapshot = self.store.db.snapshot();
        let mut export = StateExport {
            bytes: EXPORT_MAGIC.len() as u64,
            rows: 0,
            local_meta: Vec::new(),
        };
        {
            let mut ro = ReadOptions::default();
            ro.set_total_order_seek(true);
            ro.set_iterate_upper_bound(shard_end(self.shard));
            let mut it = snapshot.raw_iterator_cf_opt(self.store.cf(CF_META)?, ro);
            it.seek(self.key(LOCAL_META_PREFIX));
            while let (Some(key), Some(value)) = (it.key(), it.value()) {
                let key = &key[SHARD_PREFIX_LEN..];
                if !key.starts_with(LOCAL_META_PREFIX) {
                    break;
                }
                export.local_meta.push((key.to_vec(), value.to_vec()));
                it.next();
            }
            it.status()?;
        }
        if !proceed(&export.local_meta) {
            return Ok(None);
        }
        out.write_all(EXPORT_MAGIC).map_err(io)?;
        for (index, name) in ALL_CFS.iter().enumerate() {
            let cf = self.store.cf(name)?;
            // The point-lookup column families have prefix extractors and
            // hash memtables: a whole-range scan must ask for total order.
            let mut ro = ReadOptions::default();
            ro.set_total_order_seek(true);
            ro.set_iterate_upper_bound(shard_end(self.shard));
            let mut it = snapshot.raw_iterator_cf_opt(cf, ro);
            it.seek(self.key(&[]));
            while let (Some(key), Some(value)) = (it.key(), it.value()) {
                let key = &key[SHARD_PREFIX_LEN..];
                if *name == CF_META && key.starts_with(LOCAL_META_PREFIX) {
                    // Read above, from this same snapshot.
                    it.next();
                    continue;
                }
                export.bytes += codec::write_image_row(out, index as u8, key, value).map_err(io)?;
                export.rows += 1;
                it.next();
            }
            it.status()?;
        }
        Ok(Some(export))
    }
}
