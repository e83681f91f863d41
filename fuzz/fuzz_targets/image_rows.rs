//! The store image row codec (how a raft snapshot is cut into parts and
//! installed): on any bytes, `image_rows_prefix` never panics and names a
//! prefix of whole rows; that prefix decodes and re-encodes to exactly the
//! same bytes; the whole input decodes only when it is all whole rows, and
//! otherwise the error points at the first row cut short.
#![no_main]

#[path = "../../engine/src/codec.rs"]
#[allow(dead_code)]
mod codec;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = codec::image_rows_prefix(data);
    assert!(whole <= data.len());

    let rows = codec::decode_image_rows(&data[..whole]).expect("a whole-row prefix decodes");
    let mut again = Vec::with_capacity(whole);
    for (cf, key, value) in &rows {
        codec::write_image_row(&mut again, *cf, key, value).expect("a row read back fits");
    }
    assert_eq!(again, &data[..whole], "rows re-encode to the same bytes");

    match codec::decode_image_rows(data) {
        Ok(all) => {
            assert_eq!(whole, data.len(), "decoded rows that are not whole");
            assert_eq!(all.len(), rows.len());
        }
        Err(codec::CodecError::Truncated { offset }) => {
            assert!(whole < data.len());
            assert_eq!(offset, whole, "the error names the first row cut short");
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
});
