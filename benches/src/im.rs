//! IM adapters: imstore's IM commands, and the schema an IM team would put
//! in SQLite (or MySQL) instead: messages, members with read positions,
//! per-user inbox rows written for every member of every conversation
//! (write fan-out, the usual "timeline table"), and one receipt row per
//! (message, reader). Both are durable the same way (fsynced log).

use std::path::Path;
use std::sync::Mutex;

use imstore_engine::{Bytes, Command, Engine, Options, Outcome, SendMessage, SyncCursor};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{bench_error, checksum};

/// What both IM stores can do, as the IM benches use it.
pub trait ImStore: Send + Sync {
    /// Short name used in bench ids and tables.
    fn name(&self) -> &'static str;
    /// Creates a group with these members (`members[0]` owns it).
    fn create_group(&self, conversation: u64, members: &[u64]);
    /// Finds or creates the direct conversation of two users.
    fn open_direct(&self, a: u64, b: u64) -> u64;
    /// Sends messages (conversation, sender, client id) in one durable write.
    fn send_all(&self, messages: &[(u64, u64, String)]);
    /// Sends one message durably; returns its seq.
    fn send(&self, conversation: u64, sender: u64, client_msg_id: &str) -> u64;
    /// [`ImStore::send`] mentioning `mentions`: each mentioned member's
    /// list counts it until read.
    fn send_mentioning(
        &self,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
        mentions: &[u64],
    ) -> u64;
    /// Moves a read position forward to `up_to`, recording receipts.
    fn mark_read(&self, user: u64, conversation: u64, up_to: u64);
    /// Many `mark_read`s (user, conversation, up_to) in one durable write.
    fn mark_read_all(&self, marks: &[(u64, u64, u64)]);
    /// (readers, non-readers) of one message among the other members.
    fn read_list(&self, conversation: u64, seq: u64) -> (usize, usize);
    /// How many of the other members read one message, and how many have
    /// not, without the lists.
    fn read_counts(&self, conversation: u64, seq: u64) -> (usize, usize);
    /// The user's newest inbox seq.
    fn inbox_head(&self, user: u64) -> u64;
    /// Up to `limit` inbox entries after `after` with their bodies; returns
    /// (entries, checksum, conversations reported as advanced).
    fn sync(&self, user: u64, after: u64, limit: usize) -> (usize, u64, usize);
    /// The user's `limit` most recent conversations with unread counts and
    /// last messages; returns (entries, checksum).
    fn conversation_list(&self, user: u64, limit: usize) -> (usize, u64);
    /// A conversation's last seq.
    fn last_seq(&self, conversation: u64) -> u64;
}

fn payload(client_msg_id: &str) -> Vec<u8> {
    let mut p = client_msg_id.as_bytes().to_vec();
    p.resize(100, b'.');
    p
}

/// imstore's engine, with its IM commands.
pub struct ImstoreIm(pub Engine);

impl ImstoreIm {
    /// Opens an engine in `dir` with these options.
    pub fn open(dir: &Path, options: Options) -> Self {
        ImstoreIm(Engine::open(dir, options).unwrap_or_else(|e| bench_error("open", e)))
    }

    fn send_message(conversation: u64, sender: u64, client_msg_id: &str) -> SendMessage {
        SendMessage {
            conversation,
            sender,
            client_msg_id: Bytes::from(client_msg_id.to_owned()),
            payload: Bytes::from(payload(client_msg_id)),
            timestamp_ms: 1_700_000_000_000 + u64::from(crc32fast::hash(client_msg_id.as_bytes())),
            receipt: false,
        }
    }

    fn send_command(conversation: u64, sender: u64, client_msg_id: &str) -> Command {
        Command::Send(Self::send_message(conversation, sender, client_msg_id))
    }

    fn run(&self, command: Command) -> Outcome {
        self.0
            .execute(command)
            .unwrap_or_else(|e| bench_error("command", e))
    }
}

impl ImStore for ImstoreIm {
    fn name(&self) -> &'static str {
        "imstore"
    }

    fn create_group(&self, conversation: u64, members: &[u64]) {
        self.run(Command::CreateGroup {
            conversation,
            owner: members.first().copied().unwrap_or(1),
            members: members.to_vec(),
            timestamp_ms: 1,
        });
    }

    fn open_direct(&self, a: u64, b: u64) -> u64 {
        match self.run(Command::OpenDirect {
            user: a,
            peer: b,
            timestamp_ms: 1,
        }) {
            Outcome::Conversation { conversation, .. } => conversation,
            other => bench_error("open direct", format!("{other:?}")),
        }
    }

    fn send_all(&self, messages: &[(u64, u64, String)]) {
        let commands = messages
            .iter()
            .map(|(c, s, id)| Self::send_command(*c, *s, id))
            .collect();
        for result in self.0.execute_all(commands) {
            result.unwrap_or_else(|e| bench_error("send", e));
        }
    }

    fn send(&self, conversation: u64, sender: u64, client_msg_id: &str) -> u64 {
        match self.run(Self::send_command(conversation, sender, client_msg_id)) {
            Outcome::Sent(a) => a.seq,
            other => bench_error("send", format!("{other:?}")),
        }
    }

    fn send_mentioning(
        &self,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
        mentions: &[u64],
    ) -> u64 {
        let message = Self::send_message(conversation, sender, client_msg_id);
        let command = Command::SendMentioning {
            message,
            mentions: imstore_engine::codec::Mentions {
                everyone: false,
                users: mentions.to_vec(),
            },
        };
        match self.run(command) {
            Outcome::Sent(a) => a.seq,
            other => bench_error("send", format!("{other:?}")),
        }
    }

    fn mark_read(&self, user: u64, conversation: u64, up_to: u64) {
        self.0
            .mark_read(user, conversation, up_to)
            .unwrap_or_else(|e| bench_error("mark read", e));
    }

    fn mark_read_all(&self, marks: &[(u64, u64, u64)]) {
        let commands = marks
            .iter()
            .map(|&(user, conversation, up_to)| Command::MarkRead {
                user,
                conversation,
                up_to,
            })
            .collect();
        for result in self.0.execute_all(commands) {
            result.unwrap_or_else(|e| bench_error("mark read", e));
        }
    }

    fn read_list(&self, conversation: u64, seq: u64) -> (usize, usize) {
        let r = self
            .0
            .receipts(conversation, seq)
            .unwrap_or_else(|e| bench_error("receipts", e));
        (r.read.len(), r.unread.len())
    }

    fn read_counts(&self, conversation: u64, seq: u64) -> (usize, usize) {
        let pages = self
            .0
            .receipt_pages(conversation, &[seq], None)
            .unwrap_or_else(|e| bench_error("receipt counts", e));
        pages.first().map_or((0, 0), |p| {
            (
                usize::try_from(p.read_count).unwrap_or(usize::MAX),
                usize::try_from(p.unread_count).unwrap_or(usize::MAX),
            )
        })
    }

    fn inbox_head(&self, user: u64) -> u64 {
        // The head is the last inbox seq: page through from the start once.
        let mut cursor = SyncCursor::default();
        loop {
            let page = self
                .0
                .sync(user, cursor.clone(), 10_000)
                .unwrap_or_else(|e| bench_error("sync", e));
            cursor = page.cursor;
            if !page.more {
                return cursor.inbox_seq;
            }
        }
    }

    fn sync(&self, user: u64, after: u64, limit: usize) -> (usize, u64, usize) {
        let page = self
            .0
            .sync(
                user,
                SyncCursor {
                    inbox_seq: after,
                    ..SyncCursor::default()
                },
                limit,
            )
            .unwrap_or_else(|e| bench_error("sync", e));
        let sum = page.messages.iter().fold(0u64, |acc, (_, v)| {
            acc ^ checksum(v.message.seq, &v.message.payload)
        });
        (page.messages.len(), sum, page.advanced.len())
    }

    fn conversation_list(&self, user: u64, limit: usize) -> (usize, u64) {
        let list = self
            .0
            .conversation_list(user, None, limit)
            .unwrap_or_else(|e| bench_error("conversation list", e));
        let sum = list.iter().fold(0u64, |acc, s| {
            let last = s
                .last_message
                .as_ref()
                .map_or(0, |v| checksum(v.message.seq, &v.message.payload));
            acc ^ last ^ s.unread.wrapping_mul(31)
        });
        (list.len(), sum)
    }

    fn last_seq(&self, conversation: u64) -> u64 {
        self.0
            .last_seq(conversation)
            .unwrap_or_else(|e| bench_error("last seq", e))
    }
}

/// The SQLite schema an IM team would write: every member of every
/// conversation gets an inbox row per message, every reader a receipt row
/// per message. One connection; WAL mode, `synchronous=FULL`.
pub struct SqliteIm {
    conn: Mutex<Connection>,
}

impl SqliteIm {
    /// Creates the database file in `dir`.
    pub fn open(dir: &Path) -> Self {
        let conn =
            Connection::open(dir.join("im.sqlite")).unwrap_or_else(|e| bench_error("open", e));
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-262144;
             CREATE TABLE conversations (
                 conversation INTEGER PRIMARY KEY,
                 last_seq INTEGER NOT NULL,
                 last_ts INTEGER NOT NULL
             );
             CREATE TABLE direct (low INTEGER, high INTEGER, conversation INTEGER,
                 PRIMARY KEY (low, high)) WITHOUT ROWID;
             CREATE TABLE messages (
                 conversation INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 sender INTEGER NOT NULL,
                 ts INTEGER NOT NULL,
                 client_msg_id TEXT NOT NULL,
                 payload BLOB NOT NULL,
                 PRIMARY KEY (conversation, seq)
             ) WITHOUT ROWID;
             CREATE UNIQUE INDEX messages_dedup ON messages (conversation, sender, client_msg_id);
             CREATE TABLE members (
                 conversation INTEGER NOT NULL,
                 user INTEGER NOT NULL,
                 read_seq INTEGER NOT NULL,
                 PRIMARY KEY (conversation, user)
             ) WITHOUT ROWID;
             CREATE INDEX members_by_user ON members (user, conversation);
             CREATE TABLE users (user INTEGER PRIMARY KEY, inbox_last INTEGER NOT NULL);
             CREATE TABLE inbox (
                 user INTEGER NOT NULL,
                 inbox_seq INTEGER NOT NULL,
                 conversation INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 PRIMARY KEY (user, inbox_seq)
             ) WITHOUT ROWID;
             CREATE TABLE receipts (
                 conversation INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 user INTEGER NOT NULL,
                 PRIMARY KEY (conversation, seq, user)
             ) WITHOUT ROWID;
             CREATE TABLE mentions (
                 user INTEGER NOT NULL,
                 conversation INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 PRIMARY KEY (user, conversation, seq)
             ) WITHOUT ROWID;",
        )
        .unwrap_or_else(|e| bench_error("schema", e));
        SqliteIm {
            conn: Mutex::new(conn),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> T {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).unwrap_or_else(|e| bench_error("sqlite", e))
    }

    fn add_members(
        tx: &rusqlite::Transaction<'_>,
        conversation: u64,
        members: &[u64],
    ) -> rusqlite::Result<()> {
        let mut member = tx.prepare_cached(
            "INSERT OR IGNORE INTO members (conversation, user, read_seq) VALUES (?1, ?2, 0)",
        )?;
        let mut user =
            tx.prepare_cached("INSERT OR IGNORE INTO users (user, inbox_last) VALUES (?1, 0)")?;
        for &m in members {
            member.execute(params![conversation as i64, m as i64])?;
            user.execute(params![m as i64])?;
        }
        Ok(())
    }

    fn send_in(
        tx: &rusqlite::Transaction<'_>,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
    ) -> rusqlite::Result<u64> {
        let ts = 1_700_000_000_000i64 + i64::from(crc32fast::hash(client_msg_id.as_bytes()));
        let dup: Option<i64> = tx
            .prepare_cached(
                "SELECT seq FROM messages WHERE conversation = ?1 AND sender = ?2 AND client_msg_id = ?3",
            )?
            .query_row(params![conversation as i64, sender as i64, client_msg_id], |r| r.get(0))
            .optional()?;
        if let Some(seq) = dup {
            return Ok(seq as u64);
        }
        let seq: i64 = tx
            .prepare_cached(
                "UPDATE conversations SET last_seq = last_seq + 1, last_ts = ?2
                 WHERE conversation = ?1 RETURNING last_seq",
            )?
            .query_row(params![conversation as i64, ts], |r| r.get(0))?;
        tx.prepare_cached(
            "INSERT INTO messages (conversation, seq, sender, ts, client_msg_id, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            conversation as i64,
            seq,
            sender as i64,
            ts,
            client_msg_id,
            payload(client_msg_id)
        ])?;
        // Write fan-out to every member's inbox.
        tx.prepare_cached(
            "UPDATE users SET inbox_last = inbox_last + 1
             WHERE user IN (SELECT user FROM members WHERE conversation = ?1)",
        )?
        .execute(params![conversation as i64])?;
        tx.prepare_cached(
            "INSERT INTO inbox (user, inbox_seq, conversation, seq)
             SELECT m.user, u.inbox_last, ?1, ?2 FROM members m JOIN users u ON u.user = m.user
             WHERE m.conversation = ?1",
        )?
        .execute(params![conversation as i64, seq])?;
        Self::mark_read_in(tx, sender, conversation, seq as u64)?;
        Ok(seq as u64)
    }

    fn mark_read_in(
        tx: &rusqlite::Transaction<'_>,
        user: u64,
        conversation: u64,
        up_to: u64,
    ) -> rusqlite::Result<()> {
        let old: i64 = tx
            .prepare_cached("SELECT read_seq FROM members WHERE conversation = ?1 AND user = ?2")?
            .query_row(params![conversation as i64, user as i64], |r| r.get(0))?;
        if up_to as i64 <= old {
            return Ok(());
        }
        tx.prepare_cached(
            "INSERT OR IGNORE INTO receipts (conversation, seq, user)
             SELECT conversation, seq, ?3 FROM messages
             WHERE conversation = ?1 AND seq > ?2 AND seq <= ?4 AND sender != ?3",
        )?
        .execute(params![conversation as i64, old, user as i64, up_to as i64])?;
        tx.prepare_cached(
            "UPDATE members SET read_seq = ?3 WHERE conversation = ?1 AND user = ?2",
        )?
        .execute(params![conversation as i64, user as i64, up_to as i64])?;
        Ok(())
    }
}

impl ImStore for SqliteIm {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn create_group(&self, conversation: u64, members: &[u64]) {
        self.with(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO conversations (conversation, last_seq, last_ts) VALUES (?1, 0, 1)",
                params![conversation as i64],
            )?;
            Self::add_members(&tx, conversation, members)?;
            tx.commit()
        })
    }

    fn open_direct(&self, a: u64, b: u64) -> u64 {
        let (low, high) = (a.min(b), a.max(b));
        self.with(|conn| {
            let tx = conn.transaction()?;
            let found: Option<i64> = tx
                .query_row(
                    "SELECT conversation FROM direct WHERE low = ?1 AND high = ?2",
                    params![low as i64, high as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let id = match found {
                Some(id) => id as u64,
                None => {
                    let id = (1u64 << 62) | (low << 24) | high;
                    tx.execute(
                        "INSERT INTO direct (low, high, conversation) VALUES (?1, ?2, ?3)",
                        params![low as i64, high as i64, id as i64],
                    )?;
                    tx.execute(
                        "INSERT INTO conversations (conversation, last_seq, last_ts) VALUES (?1, 0, 1)",
                        params![id as i64],
                    )?;
                    Self::add_members(&tx, id, &[low, high])?;
                    id
                }
            };
            tx.commit()?;
            Ok(id)
        })
    }

    fn send_all(&self, messages: &[(u64, u64, String)]) {
        self.with(|conn| {
            let tx = conn.transaction()?;
            for (c, s, id) in messages {
                Self::send_in(&tx, *c, *s, id)?;
            }
            tx.commit()
        })
    }

    fn send(&self, conversation: u64, sender: u64, client_msg_id: &str) -> u64 {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let seq = Self::send_in(&tx, conversation, sender, client_msg_id)?;
            tx.commit()?;
            Ok(seq)
        })
    }

    fn send_mentioning(
        &self,
        conversation: u64,
        sender: u64,
        client_msg_id: &str,
        mentions: &[u64],
    ) -> u64 {
        // The send, and a row per mentioned user in the same transaction.
        self.with(|conn| {
            let tx = conn.transaction()?;
            let seq = Self::send_in(&tx, conversation, sender, client_msg_id)?;
            for &user in mentions {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO mentions (user, conversation, seq) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![user as i64, conversation as i64, seq as i64])?;
            }
            tx.commit()?;
            Ok(seq)
        })
    }

    fn mark_read(&self, user: u64, conversation: u64, up_to: u64) {
        self.with(|conn| {
            let tx = conn.transaction()?;
            Self::mark_read_in(&tx, user, conversation, up_to)?;
            tx.commit()
        })
    }

    fn mark_read_all(&self, marks: &[(u64, u64, u64)]) {
        self.with(|conn| {
            let tx = conn.transaction()?;
            for &(user, conversation, up_to) in marks {
                Self::mark_read_in(&tx, user, conversation, up_to)?;
            }
            tx.commit()
        })
    }

    fn read_list(&self, conversation: u64, seq: u64) -> (usize, usize) {
        self.with(|conn| {
            let readers: Vec<i64> = conn
                .prepare_cached("SELECT user FROM receipts WHERE conversation = ?1 AND seq = ?2")?
                .query_map(params![conversation as i64, seq as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let others: Vec<i64> = conn
                .prepare_cached(
                    "SELECT m.user FROM members m WHERE m.conversation = ?1 AND m.user !=
                       (SELECT sender FROM messages WHERE conversation = ?1 AND seq = ?2)
                     AND NOT EXISTS (SELECT 1 FROM receipts r
                       WHERE r.conversation = ?1 AND r.seq = ?2 AND r.user = m.user)",
                )?
                .query_map(params![conversation as i64, seq as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((readers.len(), others.len()))
        })
    }

    fn read_counts(&self, conversation: u64, seq: u64) -> (usize, usize) {
        // The receipt rows counted by the primary key; the others are the
        // members but the sender, less those.
        self.with(|conn| {
            let read: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM receipts WHERE conversation = ?1 AND seq = ?2",
                )?
                .query_row(params![conversation as i64, seq as i64], |r| r.get(0))?;
            let others: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM members WHERE conversation = ?1 AND user !=
                       (SELECT sender FROM messages WHERE conversation = ?1 AND seq = ?2)",
                )?
                .query_row(params![conversation as i64, seq as i64], |r| r.get(0))?;
            Ok((read as usize, (others - read).max(0) as usize))
        })
    }

    fn inbox_head(&self, user: u64) -> u64 {
        self.with(|conn| {
            conn.query_row(
                "SELECT inbox_last FROM users WHERE user = ?1",
                params![user as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
        })
    }

    fn sync(&self, user: u64, after: u64, limit: usize) -> (usize, u64, usize) {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT m.seq, m.payload FROM inbox i
                 JOIN messages m ON m.conversation = i.conversation AND m.seq = i.seq
                 WHERE i.user = ?1 AND i.inbox_seq > ?2 ORDER BY i.inbox_seq LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![user as i64, after as i64, limit as i64])?;
            let (mut n, mut sum) = (0, 0u64);
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let payload: Vec<u8> = row.get(1)?;
                sum ^= checksum(seq as u64, &payload);
                n += 1;
            }
            Ok((n, sum, 0))
        })
    }

    fn conversation_list(&self, user: u64, limit: usize) -> (usize, u64) {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.conversation, c.last_seq, c.last_seq - mb.read_seq, m.seq, m.payload
                 FROM members mb
                 JOIN conversations c ON c.conversation = mb.conversation
                 LEFT JOIN messages m ON m.conversation = c.conversation AND m.seq = c.last_seq
                 WHERE mb.user = ?1
                 ORDER BY c.last_ts DESC, c.conversation DESC LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![user as i64, limit as i64])?;
            let (mut n, mut sum) = (0, 0u64);
            while let Some(row) = rows.next()? {
                let unread: i64 = row.get(2)?;
                let seq: Option<i64> = row.get(3)?;
                let payload: Option<Vec<u8>> = row.get(4)?;
                let last = match (seq, payload) {
                    (Some(s), Some(p)) => checksum(s as u64, &p),
                    _ => 0,
                };
                sum ^= last ^ (unread as u64).wrapping_mul(31);
                n += 1;
            }
            Ok((n, sum))
        })
    }

    fn last_seq(&self, conversation: u64) -> u64 {
        self.with(|conn| {
            conn.query_row(
                "SELECT last_seq FROM conversations WHERE conversation = ?1",
                params![conversation as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
        })
    }
}
