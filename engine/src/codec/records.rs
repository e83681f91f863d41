//! Segment records: one message's frame (length, CRC32, body), the
//! iterator over a segment's frames, and the merge operator that appends
//! records to a segment.

use super::*;

/// A record as decoded from a segment, borrowing from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The message's seq in its conversation.
    pub seq: u64,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The sending user.
    pub sender: u64,
    /// The client's message id (idempotency key part).
    pub client_msg_id: &'a [u8],
    /// The message body, opaque to the engine.
    pub payload: &'a [u8],
}

/// Length of the frame that [`encode_record`] writes for these fields.
pub fn framed_len(client_msg_id_len: usize, payload_len: usize) -> usize {
    FRAME_HEADER_LEN + RECORD_FIXED_LEN + client_msg_id_len + payload_len
}

/// Appends one framed record to `out`. The caller has checked that the
/// client id fits in a u16 and the body in a u32 (the engine's limits are
/// far below both).
pub fn encode_record(out: &mut Vec<u8>, record: &RecordRef<'_>) {
    let body_len = RECORD_FIXED_LEN + record.client_msg_id.len() + record.payload.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    let frame_start = out.len();
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]); // CRC, filled in below
    let body_start = out.len();
    out.push(RECORD_VERSION);
    out.extend_from_slice(&record.seq.to_be_bytes());
    out.extend_from_slice(&record.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&record.sender.to_be_bytes());
    out.extend_from_slice(&(record.client_msg_id.len() as u16).to_be_bytes());
    out.extend_from_slice(record.client_msg_id);
    out.extend_from_slice(record.payload);
    let crc = crc32fast::hash(&out[body_start..]);
    out[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// One frame located inside a segment, not yet checksummed.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Byte offset of the frame header inside the segment.
    pub offset: usize,
    crc: u32,
    body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Byte offset just past this frame inside the segment.
    pub fn end(&self) -> usize {
        self.offset + FRAME_HEADER_LEN + self.body.len()
    }

    /// Verifies the CRC and decodes the body. Only a frame that passes is
    /// ever turned into a record, so corrupt bytes never reach a caller.
    pub fn decode(&self) -> Result<RecordRef<'a>, CodecError> {
        if crc32fast::hash(self.body) != self.crc {
            return Err(CodecError::Checksum {
                offset: self.offset,
            });
        }
        let body = self.body;
        if body.len() < RECORD_FIXED_LEN {
            return Err(CodecError::Malformed {
                offset: self.offset,
            });
        }
        if body[0] != RECORD_VERSION {
            return Err(CodecError::UnknownVersion { found: body[0] });
        }
        let cid_len = u16::from_be_bytes([body[25], body[26]]) as usize;
        let rest = &body[RECORD_FIXED_LEN..];
        if cid_len > rest.len() {
            return Err(CodecError::Malformed {
                offset: self.offset,
            });
        }
        Ok(RecordRef {
            seq: read_u64(body, 1),
            timestamp_ms: read_u64(body, 9),
            sender: read_u64(body, 17),
            client_msg_id: &rest[..cid_len],
            payload: &rest[cid_len..],
        })
    }
}

/// Walks the frames of a segment value. Framing errors (a length running
/// past the end) are reported; checksums are verified by [`Frame::decode`],
/// so a reader pays for CRCs only on the records it returns.
pub struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Starts at the first frame of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Frames {
            bytes,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        let offset = self.pos;
        let rest = &self.bytes[offset..];
        if rest.len() < FRAME_HEADER_LEN {
            self.failed = true;
            return Some(Err(CodecError::Truncated { offset }));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(body) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            self.failed = true;
            return Some(Err(CodecError::Truncated { offset }));
        };
        self.pos = offset + FRAME_HEADER_LEN + len;
        Some(Ok(Frame { offset, crc, body }))
    }
}

/// Decodes every record of a segment whose first record has seq `base_seq`,
/// checking each CRC and that seqs run `base_seq, base_seq + 1, …`.
pub fn decode_segment(bytes: &[u8], base_seq: u64) -> Result<Vec<RecordRef<'_>>, CodecError> {
    let mut records = Vec::new();
    for (i, frame) in Frames::new(bytes).enumerate() {
        let record = frame?.decode()?;
        let expected = base_seq.wrapping_add(i as u64);
        if record.seq != expected {
            return Err(CodecError::SeqMismatch {
                expected,
                found: record.seq,
            });
        }
        records.push(record);
    }
    Ok(records)
}

/// The segment merge operator: the stored value followed by every operand,
/// in order. Records are self-delimiting frames, so concatenation is the
/// whole of appending. It never inspects or rejects bytes: a corrupt record
/// must surface as a typed error to the reader of that one conversation,
/// not as a failed compaction that stalls the whole store.
pub fn merge_segment(existing: Option<&[u8]>, operands: &[&[u8]]) -> Vec<u8> {
    let total = existing.map_or(0, <[u8]>::len) + operands.iter().map(|o| o.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    if let Some(existing) = existing {
        out.extend_from_slice(existing);
    }
    for operand in operands {
        out.extend_from_slice(operand);
    }
    out
}
