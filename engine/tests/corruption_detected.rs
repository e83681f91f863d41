//! Flipped bytes in stored data are detected and reported as typed errors
//! naming the conversation and segment; nothing panics, no wrong data is
//! returned, and other conversations stay readable.

mod common;

use common::{msg, read_all, small_segments, TestResult};
use imstore_engine::{Direction, Engine, Error};

fn fill(engine: &Engine, conversations: u64, per: u64) -> TestResult {
    for c in 0..conversations {
        for i in 0..per {
            engine.append(msg(
                c,
                1,
                &format!("{c}-{i}"),
                format!("message {i} of {c}").as_bytes(),
                5,
            ))?;
        }
    }
    Ok(())
}

#[test]
fn flipped_byte_in_a_segment_is_reported_per_segment() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), small_segments())?;
    fill(&engine, 3, 10)?; // segments of 4: bases 1, 5, 9
    let original = engine.raw_segment(1, 5)?.ok_or("segment 5 missing")?;

    // Every single-byte flip of segment (1, 5) is caught, whatever field it hits.
    for at in 0..original.len() {
        let mut bad = original.clone();
        bad[at] ^= 0x5a;
        engine.raw_overwrite_segment(1, 5, &bad)?;
        let read = engine.read(1, 1, 100, Direction::Forward);
        match read {
            Err(Error::Corruption {
                conversation: 1,
                segment: 5,
                ..
            }) => {}
            other => panic!("flip at byte {at} gave {other:?}"),
        }
        // The segments before it are still served; so are other conversations.
        assert_eq!(engine.read(1, 1, 4, Direction::Forward)?.len(), 4);
        assert_eq!(read_all(&engine, 0)?.len(), 10);
        assert_eq!(read_all(&engine, 2)?.len(), 10);
    }

    // Restored, the conversation reads whole again.
    engine.raw_overwrite_segment(1, 5, &original)?;
    assert_eq!(read_all(&engine, 1)?.len(), 10);
    Ok(())
}

#[test]
fn missing_segments_are_reported_not_skipped() -> TestResult {
    for missing in [1, 5, 9] {
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(dir.path(), small_segments())?;
        fill(&engine, 1, 10)?; // segments 1, 5, 9
        engine.raw_delete_segment(0, missing)?;
        let forward = engine.read(0, 1, 100, Direction::Forward);
        assert!(
            matches!(
                forward,
                Err(Error::Corruption {
                    conversation: 0,
                    ..
                })
            ),
            "segment {missing} gone: forward gave {forward:?}"
        );
        let backward = engine.latest(0, 100);
        assert!(
            matches!(
                backward,
                Err(Error::Corruption {
                    conversation: 0,
                    ..
                })
            ),
            "segment {missing} gone: backward gave {backward:?}"
        );
    }
    Ok(())
}

#[test]
fn truncated_segment_is_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), small_segments())?;
    fill(&engine, 1, 4)?;
    let original = engine.raw_segment(0, 1)?.ok_or("segment missing")?;
    for len in 0..original.len() {
        engine.raw_overwrite_segment(0, 1, &original[..len])?;
        // Cut anywhere, even on a frame boundary, the missing records are
        // noticed: the conversation state says how many there must be.
        let latest = engine.latest(0, 2);
        assert!(
            matches!(
                latest,
                Err(Error::Corruption {
                    conversation: 0,
                    segment: 1,
                    ..
                })
            ),
            "truncation to {len} gave {latest:?}"
        );
        let forward = engine.read(0, 1, 10, Direction::Forward);
        assert!(
            matches!(
                forward,
                Err(Error::Corruption {
                    conversation: 0,
                    ..
                })
            ),
            "truncation to {len} gave {forward:?}"
        );
    }
    Ok(())
}

#[test]
fn flipped_bytes_in_sst_files_give_typed_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let engine = Engine::open(dir.path(), small_segments())?;
        fill(&engine, 20, 40)?;
        engine.compact()?;
    }
    // Flip a byte inside the data blocks of every table file.
    let mut flipped = 0;
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sst") {
            let mut bytes = std::fs::read(&path)?;
            if bytes.len() > 200 {
                bytes[100] ^= 0xff;
                std::fs::write(&path, bytes)?;
                flipped += 1;
            }
        }
    }
    assert!(flipped > 0, "no table file to corrupt");

    // Opening may already notice; if it does, it is a typed error.
    let engine = match Engine::open(dir.path(), small_segments()) {
        Ok(engine) => engine,
        Err(Error::StorageCorruption { file: Some(_), .. }) => return Ok(()),
        Err(other) => return Err(format!("unexpected open error {other:?}").into()),
    };
    let mut corrupt = 0;
    for c in 0..20 {
        match read_all(&engine, c) {
            Ok(all) => {
                // Whatever is returned is exactly right.
                for (i, m) in all.iter().enumerate() {
                    assert_eq!(m.seq, i as u64 + 1);
                    assert_eq!(&m.payload[..], format!("message {i} of {c}").as_bytes());
                }
            }
            // The error names the conversation whose read met the damage.
            Err(Error::StorageCorruption {
                conversation: Some(seen),
                ..
            })
            | Err(Error::Corruption {
                conversation: seen, ..
            }) => {
                assert_eq!(seen, c);
                corrupt += 1
            }
            Err(other) => return Err(format!("unexpected read error {other:?}").into()),
        }
    }
    assert!(corrupt > 0, "corruption in table files went unnoticed");
    Ok(())
}
