//! The segment decoder on two kinds of input:
//!
//! 1. the raw bytes as a stored segment: decoding never panics, and whatever
//!    it accepts re-encodes to exactly the same bytes (so nothing corrupt is
//!    ever passed off as a valid record);
//! 2. a valid segment built from the input (records whose payloads are
//!    pieces of the input), then damaged at input-chosen places: each
//!    damage must be reported, never decoded into different records.
//!
//! Random bytes alone almost never form a frame with a matching CRC, so
//! part 2 is what drives the decoder through its accepting paths.
#![no_main]

#[path = "../../engine/src/codec.rs"]
#[allow(dead_code)]
mod codec;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (base, bytes) = match data.split_first() {
        Some((b, rest)) => (u64::from(*b), rest),
        None => (0, data),
    };

    // --- 1. raw bytes as a segment
    for frame in codec::Frames::new(bytes) {
        match frame {
            Ok(f) => {
                let _ = f.decode();
            }
            Err(_) => break,
        }
    }
    if let Ok(records) = codec::decode_segment(bytes, base) {
        let mut again = Vec::new();
        for r in &records {
            codec::encode_record(&mut again, r);
        }
        assert_eq!(again, bytes, "decoder accepted bytes it would not write");
    }
    if let Ok(s) = codec::ConversationState::decode(bytes) {
        assert_eq!(&s.encode()[..], bytes);
    }
    if let Ok(e) = codec::DedupEntry::decode(bytes) {
        assert_eq!(&e.encode()[..], bytes);
    }
    let _ = codec::parse_segment_key(bytes);

    // --- 2. a valid segment from the input, then damaged
    // The first 4 bytes (if any) steer the damage; the rest, split on 0x00,
    // are the payloads of consecutive records.
    let (steer, body) = bytes.split_at(bytes.len().min(4));
    let payloads: Vec<&[u8]> = body.split(|b| *b == 0).take(64).collect();
    let mut segment = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let seq = base + 1 + i as u64;
        let cid = seq.to_be_bytes();
        codec::encode_record(
            &mut segment,
            &codec::RecordRef {
                seq,
                timestamp_ms: seq * 7,
                sender: i as u64,
                client_msg_id: &cid[..(i % 9)],
                payload,
            },
        );
    }
    let decoded = codec::decode_segment(&segment, base + 1).expect("a valid segment decodes");
    assert_eq!(decoded.len(), payloads.len());
    for (r, p) in decoded.iter().zip(&payloads) {
        assert_eq!(r.payload, *p);
    }
    if segment.is_empty() {
        return;
    }
    let mut damaged = segment.clone();
    let mut changed = false;
    for (k, s) in steer.iter().enumerate() {
        let at = (usize::from(*s) * 257 + k * 8191) % damaged.len();
        let flip = 1u8 << (s % 8);
        damaged[at] ^= flip;
        changed = true;
    }
    if changed && damaged != segment {
        match codec::decode_segment(&damaged, base + 1) {
            Err(_) => {}
            Ok(records) => {
                // Two flips can cancel out in a field the CRC does not
                // cover only if they restore the original bytes, which
                // `damaged != segment` excludes; so acceptance is a bug.
                panic!("damage accepted: {} records decoded", records.len());
            }
        }
    }
    // Truncation anywhere inside the segment is reported, except exactly on
    // a frame boundary (a shorter, valid segment; readers catch that by
    // comparing with the conversation's last seq).
    let cut = usize::from(steer.first().copied().unwrap_or(0)) % segment.len();
    if cut > 0 {
        let boundary = codec::Frames::new(&segment)
            .filter_map(Result::ok)
            .any(|f| f.end() == cut);
        assert!(boundary || codec::decode_segment(&segment[..cut], base + 1).is_err());
    }
});
