//! Arbitrary bytes as a stored segment: decoding never panics, and whatever
//! it accepts re-encodes to exactly the same bytes (so nothing corrupt is
//! ever passed off as a valid record).
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
    // The frame walker alone, as a reader skipping records uses it.
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
    // The fixed-size values must reject or round-trip too.
    if let Ok(s) = codec::ConversationState::decode(bytes) {
        assert_eq!(&s.encode()[..], bytes);
    }
    if let Ok(e) = codec::DedupEntry::decode(bytes) {
        assert_eq!(&e.encode()[..], bytes);
    }
    let _ = codec::parse_segment_key(bytes);
});
