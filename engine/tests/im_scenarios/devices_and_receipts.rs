//! Device syncs (acknowledged, paged, offline for long) and receipts
//! (stored lists in small groups, read positions in big ones).

use super::*;

#[test]
fn devices_sync_independently_and_a_long_offline_device_catches_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(500))?;
    create_group(&engine, 5, 1, &[2])?;
    for i in 0..120 {
        send(&engine, 5, 1 + i % 2, &format!("m{i}"), 100 + i)?;
    }
    // The phone syncs in pages as it goes, the laptop once at the end.
    // Each sync acknowledges the page before it.
    let mut phone = Vec::new();
    let mut ack = None;
    loop {
        let page = engine.sync_device(2, b"phone", ack.as_ref(), 7)?;
        phone.extend(page.messages.iter().map(|(_, v)| v.message.seq));
        ack = Some(page.cursor);
        if !page.more {
            break;
        }
    }
    assert_eq!(phone, (1..=120).collect::<Vec<u64>>());
    assert!(engine
        .sync_device(2, b"phone", ack.as_ref(), 7)?
        .messages
        .is_empty());
    // A page not acknowledged comes again, whole; the store keeps the
    // device where it last acknowledged.
    let laptop = engine.sync_device(2, b"laptop", None, 1_000)?;
    assert_eq!(laptop.messages.len(), 120);
    assert_eq!(engine.device_cursor(2, b"laptop")?, SyncCursor::default());
    let again = engine.sync_device(2, b"laptop", None, 1_000)?;
    assert_eq!(again, laptop);
    engine.ack_device(2, b"laptop", &laptop.cursor)?;
    assert_eq!(engine.device_cursor(2, b"laptop")?, laptop.cursor);
    assert!(engine
        .sync_device(2, b"laptop", None, 1_000)?
        .messages
        .is_empty());
    // A cursor from the future is refused, by sync and by save.
    let future = SyncCursor {
        inbox_seq: 1_000,
        ..SyncCursor::default()
    };
    assert!(matches!(
        engine.sync(2, future.clone(), 10),
        Err(Error::CursorFromFuture { .. })
    ));
    assert!(matches!(
        engine.execute(Command::SaveCursor {
            user: 2,
            device: Bytes::from_static(b"x"),
            cursor: future
        }),
        Err(Error::CursorFromFuture { .. })
    ));
    Ok(())
}

#[test]
fn receipts_are_lists_in_small_groups_and_positions_in_big_ones() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), im_options(3))?;
    create_group(&engine, 1, 10, &[11, 12])?;
    let m1 = send(&engine, 1, 10, "hello", 1)?;
    let m2 = send(&engine, 1, 10, "again", 2)?;
    engine.mark_read(11, 1, m2)?;
    let r = engine.receipts(1, m1)?;
    assert!(r.stored);
    assert_eq!((r.read, r.unread), (vec![11], vec![12]));
    assert_eq!(
        engine.raw_receipt(1, m1)?,
        Some(11u64.to_be_bytes().to_vec())
    );
    // Read positions never move back.
    assert_eq!(engine.mark_read(11, 1, m1)?, m2);
    assert_eq!(engine.unread(12, 1)?, 2);
    assert_eq!(engine.unread(11, 1)?, 0);
    assert_eq!(engine.unread(10, 1)?, 0, "own messages are read");

    // Above the receipt limit, unflagged messages answer from positions
    // and flagged ones keep their list.
    create_group(&engine, 2, 10, &[11, 12, 13, 14])?;
    let plain = send(&engine, 2, 10, "plain", 3)?;
    let flagged = send_flagged(&engine, 2, 10, "flagged", 4, true)?;
    engine.mark_read(12, 2, flagged)?;
    engine.mark_read(13, 2, plain)?;
    let r = engine.receipts(2, plain)?;
    assert!(!r.stored);
    assert_eq!((r.read, r.unread), (vec![12, 13], vec![11, 14]));
    let r = engine.receipts(2, flagged)?;
    assert!(r.stored);
    assert_eq!((r.read, r.unread), (vec![12], vec![11, 13, 14]));
    assert_eq!(engine.raw_receipt(2, plain)?, None);
    assert_eq!(engine.unread_total(11)?, 2, "0 in group 1, 2 in group 2");
    Ok(())
}
