//! The IM value decoders (member rows, inbox entries, friend rows,
//! overlays, cursors, user views, receipt sets, conversation states) on arbitrary
//! bytes: decoding never panics, and whatever a decoder accepts re-encodes
//! to exactly the same bytes. The receipt-set merge never panics, returns
//! a sorted set when every input is a set, and keeps damaged inputs
//! visible (concatenated) otherwise.
#![no_main]

#[path = "../../engine/src/codec.rs"]
#[allow(dead_code)]
mod codec;

use libfuzzer_sys::fuzz_target;

macro_rules! round_trip {
    ($ty:ty, $bytes:expr) => {
        if let Ok(v) = <$ty>::decode($bytes) {
            assert_eq!(&v.encode()[..], $bytes, stringify!($ty));
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(codec::ConversationState, data);
    round_trip!(codec::MemberEntry, data);
    round_trip!(codec::UserConversation, data);
    round_trip!(codec::InboxEntry, data);
    round_trip!(codec::FriendEntry, data);
    round_trip!(codec::OverlayEntry, data);
    round_trip!(codec::CursorV1, data);
    // A version 1 cursor decodes as a SyncCursor too, and re-encodes as
    // version 2: only version 2 bytes come back the same.
    if data.first() == Some(&codec::SYNC_CURSOR_VERSION) {
        round_trip!(codec::SyncCursor, data);
    } else {
        let _ = codec::SyncCursor::decode(data);
    }
    round_trip!(codec::UserView, data);
    let _ = codec::im_key_id(data, 0);
    let _ = codec::im_key_id(data, 2);

    // Receipt sets: split the input into an existing value and operands.
    let pieces: Vec<&[u8]> = data.split(|b| *b == 0xff).take(16).collect();
    let (existing, operands) = match pieces.split_first() {
        Some((first, rest)) => (Some(*first), rest),
        None => (None, &[][..]),
    };
    let merged = codec::merge_user_sets(existing, operands);
    let all_sets = existing
        .into_iter()
        .chain(operands.iter().copied())
        .all(|p| codec::decode_user_set(p).is_ok());
    if all_sets {
        let users = codec::decode_user_set(&merged).expect("merge of sets is a set");
        assert!(users.windows(2).all(|w| w[0] < w[1]), "not sorted and unique");
        for p in existing.into_iter().chain(operands.iter().copied()) {
            for u in codec::decode_user_set(p).expect("checked") {
                assert!(users.binary_search(&u).is_ok(), "merge lost a reader");
            }
        }
    } else {
        let total: usize = existing.map_or(0, <[u8]>::len) + operands.iter().map(|o| o.len()).sum::<usize>();
        assert_eq!(merged.len(), total, "damaged inputs must be kept whole");
    }
});
