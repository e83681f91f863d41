//! Store images, as a snapshot install streams them: decoding an image
//! or its rows into the rows a group writes.

use super::Space;
use crate::{Error, Result};

fn bad_image(what: &str) -> Error {
    Error::InvalidArgument(format!("store image: {what}"))
}

/// Splits an image written by `Store::export` into rows.
pub(super) fn decode_image(image: &[u8]) -> Result<Vec<super::Row>> {
    let rows = image
        .strip_prefix(crate::store::EXPORT_MAGIC.as_slice())
        .ok_or_else(|| bad_image("not an imstore image"))?;
    decode_rows(rows)
}

/// Appends one row of the `meta` column family (key, value) to image rows.
pub fn push_image_meta_row(rows: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Result<()> {
    let meta = Space::ALL
        .iter()
        .position(|s| *s == Space::Meta)
        .unwrap_or_default() as u8;
    crate::codec::write_image_row(rows, meta, key, value)
        .map(|_| ())
        .map_err(|e| bad_image(&e.to_string()))
}

/// Splits image rows (without the magic) into rows.
pub(super) fn decode_rows(rows: &[u8]) -> Result<Vec<super::Row>> {
    crate::codec::decode_image_rows(rows)
        .map_err(|e| bad_image(&format!("{e}")))?
        .into_iter()
        .map(|(index, key, value)| {
            let space = *Space::ALL
                .get(usize::from(index))
                .ok_or_else(|| bad_image("unknown column family"))?;
            Ok((space, key.to_vec(), value.to_vec()))
        })
        .collect()
}
