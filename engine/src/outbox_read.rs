//! Reads of a shard's outbox, for the task that drains it to the users'
//! shards (`docs/replication.md`, "User shards").

use bytes::Bytes;

use super::Engine;
use crate::codec::{self, im_key, tag};
use crate::store::{decode_u64, CF_IM};
use crate::{Error, OutboxBacklog, Result};

fn key_id(key: &[u8], index: usize) -> Result<u64> {
    codec::im_key_id(key, index).map_err(|reason| Error::CorruptMetadata {
        what: "outbox key".into(),
        reason,
    })
}

impl Engine {
    /// Every destination shard this shard's outbox has records for, with
    /// the first record still waiting and the last one written: what
    /// [`Command::Deliver`](crate::Command::Deliver) has yet to carry.
    /// Destinations with nothing waiting are left out.
    pub fn outbox_backlog(&self) -> Result<Vec<OutboxBacklog>> {
        let store = self.view();
        let lo = im_key(tag::OUTBOX_LAST, &[], &[]);
        let hi = im_key(tag::OUTBOX_LAST + 1, &[], &[]);
        let mut out = Vec::new();
        for (key, value) in store.scan_in(CF_IM, &lo, &hi, usize::MAX)? {
            let dest = key_id(&key, 0)?;
            let last = decode_u64(&value, "outbox head")?;
            let first_lo = im_key(tag::OUTBOX, &[dest, 0], &[]);
            let first_hi = im_key(tag::OUTBOX, &[dest.saturating_add(1)], &[]);
            if let Some((key, _)) = store.scan_in(CF_IM, &first_lo, &first_hi, 1)?.pop() {
                out.push(OutboxBacklog {
                    dest,
                    first: key_id(&key, 1)?,
                    last,
                });
            }
        }
        Ok(out)
    }

    /// The oldest outbox records toward `dest`, at most `limit` of them
    /// and, past the first, at most `max_bytes` in all: the first record's
    /// outbox seq and the records, consecutive from it. Empty when nothing
    /// waits.
    pub fn outbox_records(
        &self,
        dest: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(u64, Vec<Bytes>)> {
        let lo = im_key(tag::OUTBOX, &[dest, 0], &[]);
        let hi = im_key(tag::OUTBOX, &[dest.saturating_add(1)], &[]);
        let rows = self.view().scan_in(CF_IM, &lo, &hi, limit.max(1))?;
        let mut first = 0;
        let mut bytes = 0;
        let mut records = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let seq = key_id(&key, 1)?;
            if records.is_empty() {
                first = seq;
            } else if seq != first + records.len() as u64 || bytes + value.len() > max_bytes {
                // Acknowledged records are deleted from the front only, so
                // the waiting ones are consecutive; stop at any surprise.
                break;
            }
            bytes += value.len();
            records.push(Bytes::from(value));
        }
        Ok((first, records))
    }
}
