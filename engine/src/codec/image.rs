//! Store images: the rows a snapshot carries, framed one after another.

use super::*;

/// One row of a store image, borrowed: column family index, key, value.
pub type ImageRow<'a> = (u8, &'a [u8], &'a [u8]);

/// The row of image rows that starts at `at` and the offset after it, or
/// `None` when the bytes end inside it. Layout of a row: the column
/// family's index (u8), key length (u32 BE), key, value length (u32 BE),
/// value.
fn image_row_at(rows: &[u8], at: usize) -> Option<(ImageRow<'_>, usize)> {
    let cf_index = *rows.get(at)?;
    let mut pos = at + 1;
    let mut part = || -> Option<&[u8]> {
        let len = rows.get(pos..pos + 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let bytes = rows.get(pos + 4..(pos + 4).checked_add(len)?)?;
        pos += 4 + len;
        Some(bytes)
    };
    let key = part()?;
    let value = part()?;
    Some(((cf_index, key, value), pos))
}

/// The length of the longest prefix of `rows` (a store image's rows, after
/// its magic) that holds whole rows only: where a streamed image can be
/// cut.
pub fn image_rows_prefix(rows: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, end)) = image_row_at(rows, at) {
        at = end;
    }
    at
}

/// Writes one image row (column family index, key, value) to `out`: the
/// one encoder of the layout, for the export's stream and the installer's
/// parts alike. Returns the bytes written; a key or value of 4 GiB or more
/// is refused.
pub fn write_image_row(
    out: &mut dyn std::io::Write,
    cf_index: u8,
    key: &[u8],
    value: &[u8],
) -> std::io::Result<u64> {
    out.write_all(&[cf_index])?;
    for part in [key, value] {
        let len = u32::try_from(part.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "image row part over 4 GiB",
            )
        })?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(part)?;
    }
    Ok(9 + (key.len() + value.len()) as u64)
}

/// Splits image rows into (column family index, key, value); whole rows
/// only, or [`CodecError::Truncated`] with the offset of the row cut short.
pub fn decode_image_rows(rows: &[u8]) -> Result<Vec<ImageRow<'_>>, CodecError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        let (row, end) = image_row_at(rows, at).ok_or(CodecError::Truncated { offset: at })?;
        out.push(row);
        at = end;
    }
    Ok(out)
}
