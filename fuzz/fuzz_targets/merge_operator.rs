//! The segment merge operator on arbitrary existing values and operands:
//! it never panics, its result is the plain concatenation, and when the
//! inputs are valid runs of records, the merged segment decodes to exactly
//! their records in order; when any input is corrupt, decoding says so.
#![no_main]

#[path = "../../engine/src/codec.rs"]
#[allow(dead_code)]
mod codec;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Split the input into up to 4 pieces on a separator byte: the first is
    // the existing value, the rest are operands.
    let pieces: Vec<&[u8]> = data.splitn(4, |b| *b == 0xA5).collect();
    let (existing, operands) = match pieces.split_first() {
        Some((first, rest)) => (Some(*first), rest.to_vec()),
        None => (None, Vec::new()),
    };
    let merged = codec::merge_segment(existing, &operands);
    let concat: Vec<u8> = pieces.concat();
    assert_eq!(merged, concat);

    // Build a valid segment from the same pieces used as payloads and check
    // merge + decode returns them in order.
    let mut valid_existing = Vec::new();
    let mut valid_operands: Vec<Vec<u8>> = Vec::new();
    let mut seq = 1u64;
    for (i, p) in pieces.iter().enumerate() {
        let mut out = Vec::new();
        codec::encode_record(
            &mut out,
            &codec::RecordRef { seq, timestamp_ms: seq, sender: i as u64, client_msg_id: b"id", payload: p },
        );
        seq += 1;
        if i == 0 {
            valid_existing = out;
        } else {
            valid_operands.push(out);
        }
    }
    let ops: Vec<&[u8]> = valid_operands.iter().map(Vec::as_slice).collect();
    let merged = codec::merge_segment(Some(&valid_existing), &ops);
    let records = codec::decode_segment(&merged, 1).expect("valid records must decode");
    assert_eq!(records.len(), pieces.len());
    for (r, p) in records.iter().zip(&pieces) {
        assert_eq!(r.payload, *p);
    }

    // Flip one byte chosen by the input: decoding must fail, never return
    // different records.
    if !merged.is_empty() {
        let at = data.len() % merged.len();
        let mut bad = merged.clone();
        bad[at] ^= 0x01 | data.first().copied().unwrap_or(0);
        if bad != merged {
            assert!(codec::decode_segment(&bad, 1).is_err(), "corruption at {at} not reported");
        }
    }
});
