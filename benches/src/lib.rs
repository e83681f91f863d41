//! Benchmark adapters: imstore and the layouts an IM team would otherwise
//! pick, behind one trait, so every bench runs the same workload on each.
//!
//! Peers' dependencies (rusqlite, a second use of RocksDB) live only in this
//! crate, so a user of `imstore-engine` never pulls them in.
//!
//! Every adapter is durable in the same sense: a write returns only after
//! its log (RocksDB WAL, SQLite WAL) is fsynced. Reads return a checksum
//! over what they read, so the compiler can't skip the work and the bench
//! can check that all engines return the same data.

mod im;

pub use im::{ImStore, ImstoreIm, SqliteIm};

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use imstore_engine::{Engine, NewMessage, Options};
use rocksdb::{Direction as RocksDirection, IteratorMode, WriteBatch, WriteOptions};
use rusqlite::{params, Connection};

/// One message of a workload.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Conversation id.
    pub conversation: u64,
    /// Sender id.
    pub sender: u64,
    /// Client message id.
    pub client_msg_id: String,
    /// Body.
    pub payload: Vec<u8>,
    /// Server timestamp.
    pub timestamp_ms: u64,
}

/// What every engine under test can do.
pub trait Timelines: Send + Sync {
    /// Short name used in bench ids and tables.
    fn name(&self) -> &'static str;
    /// Durably appends one message; returns its seq.
    fn append(&self, msg: &Msg) -> u64;
    /// Durably appends many messages in one transaction.
    fn append_batch(&self, msgs: &[Msg]);
    /// The latest `n` messages; returns a checksum of (seq, payload).
    fn latest(&self, conversation: u64, n: usize) -> u64;
    /// `n` messages from seq `from` upwards; returns a checksum.
    fn range(&self, conversation: u64, from: u64, n: usize) -> u64;
    /// Makes the on-disk state steady (flush, compact, checkpoint) after a load.
    fn settle(&self);
}

/// While set, [`checksum`] hashes whole payloads (the verification pass);
/// otherwise it touches each payload's length and first and last bytes,
/// so timed loops measure the store rather than a CRC over its output.
pub static FULL_CHECKSUMS: AtomicBool = AtomicBool::new(false);

/// Checksum of one read message, identical across adapters.
pub fn checksum(seq: u64, payload: &[u8]) -> u64 {
    let digest = if FULL_CHECKSUMS.load(Ordering::Relaxed) {
        u64::from(crc32fast::hash(payload))
    } else {
        let edge = |b: Option<&u8>| u64::from(b.copied().unwrap_or(0));
        (payload.len() as u64) << 16 | edge(payload.first()) << 8 | edge(payload.last())
    };
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ digest
}

fn bench_error(what: &str, err: impl std::fmt::Display) -> ! {
    panic!("benchmark {what} failed: {err}")
}

/// imstore's engine with its default (durable) options.
pub struct Imstore(pub Engine);

impl Imstore {
    /// Opens an engine in `dir` with `options`.
    pub fn open(dir: &Path, options: Options) -> Self {
        Imstore(Engine::open(dir, options).unwrap_or_else(|e| bench_error("open", e)))
    }
}

fn new_message(m: &Msg) -> NewMessage {
    NewMessage {
        conversation: m.conversation,
        sender: m.sender,
        client_msg_id: m.client_msg_id.clone().into(),
        payload: m.payload.clone().into(),
        timestamp_ms: m.timestamp_ms,
    }
}

impl Timelines for Imstore {
    fn name(&self) -> &'static str {
        "imstore"
    }
    fn append(&self, msg: &Msg) -> u64 {
        self.0
            .append(new_message(msg))
            .unwrap_or_else(|e| bench_error("append", e))
            .seq
    }
    fn append_batch(&self, msgs: &[Msg]) {
        self.0
            .append_batch(msgs.iter().map(new_message).collect())
            .unwrap_or_else(|e| bench_error("append_batch", e));
    }
    fn latest(&self, conversation: u64, n: usize) -> u64 {
        let page = self
            .0
            .latest(conversation, n)
            .unwrap_or_else(|e| bench_error("latest", e));
        page.iter()
            .fold(0, |acc, m| acc ^ checksum(m.seq, &m.payload))
    }
    fn range(&self, conversation: u64, from: u64, n: usize) -> u64 {
        let page = self
            .0
            .read(conversation, from, n, imstore_engine::Direction::Forward)
            .unwrap_or_else(|e| bench_error("range", e));
        page.iter()
            .fold(0, |acc, m| acc ^ checksum(m.seq, &m.payload))
    }
    fn settle(&self) {
        self.0
            .compact()
            .unwrap_or_else(|e| bench_error("compact", e));
    }
}

/// The plain layout: one RocksDB key per message, key = conversation (u64
/// BE) + seq (u64 BE), value = sender, timestamp, client id, payload. Seqs
/// come from an in-memory counter per conversation, as such a design would
/// do behind a single process.
pub struct RocksKv {
    db: rocksdb::DB,
    next_seq: Vec<AtomicU64>,
}

impl RocksKv {
    /// Opens a plain RocksDB in `dir` with the same block cache size as
    /// imstore's default, for `conversations` conversations.
    pub fn open(dir: &Path, conversations: usize) -> Self {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        let cache = rocksdb::Cache::new_lru_cache(Options::default().block_cache_bytes);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let db = rocksdb::DB::open(&opts, dir).unwrap_or_else(|e| bench_error("open", e));
        RocksKv {
            db,
            next_seq: (0..conversations).map(|_| AtomicU64::new(1)).collect(),
        }
    }

    fn key(conversation: u64, seq: u64) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&conversation.to_be_bytes());
        key[8..].copy_from_slice(&seq.to_be_bytes());
        key
    }

    fn value(m: &Msg) -> Vec<u8> {
        let mut v = Vec::with_capacity(18 + m.client_msg_id.len() + m.payload.len());
        v.extend_from_slice(&m.sender.to_be_bytes());
        v.extend_from_slice(&m.timestamp_ms.to_be_bytes());
        v.extend_from_slice(&(m.client_msg_id.len() as u16).to_be_bytes());
        v.extend_from_slice(m.client_msg_id.as_bytes());
        v.extend_from_slice(&m.payload);
        v
    }

    fn payload_of(value: &[u8]) -> &[u8] {
        let cid_len = u16::from_be_bytes([value[16], value[17]]) as usize;
        &value[18 + cid_len..]
    }

    fn put(&self, batch: &mut WriteBatch, m: &Msg) -> u64 {
        let seq = self.next_seq[m.conversation as usize].fetch_add(1, Ordering::Relaxed);
        batch.put(Self::key(m.conversation, seq), Self::value(m));
        seq
    }

    /// Up to `n` messages of `conversation` from seq `from` in `direction`.
    fn scan(&self, conversation: u64, from: u64, direction: RocksDirection, n: usize) -> u64 {
        let mut acc = 0;
        let start = Self::key(conversation, from);
        let iter = self.db.iterator(IteratorMode::From(&start, direction));
        for item in iter.take(n) {
            let (k, v) = item.unwrap_or_else(|e| bench_error("iterate", e));
            if k[..8] != conversation.to_be_bytes() {
                break;
            }
            let seq = u64::from_be_bytes(k[8..16].try_into().unwrap_or_default());
            acc ^= checksum(seq, Self::payload_of(&v));
        }
        acc
    }

    fn synced(&self, batch: WriteBatch) {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .unwrap_or_else(|e| bench_error("write", e));
    }
}

impl Timelines for RocksKv {
    fn name(&self) -> &'static str {
        "rocksdb_kv"
    }
    fn append(&self, msg: &Msg) -> u64 {
        let mut batch = WriteBatch::default();
        let seq = self.put(&mut batch, msg);
        self.synced(batch);
        seq
    }
    fn append_batch(&self, msgs: &[Msg]) {
        let mut batch = WriteBatch::default();
        for m in msgs {
            self.put(&mut batch, m);
        }
        self.synced(batch);
    }
    fn latest(&self, conversation: u64, n: usize) -> u64 {
        self.scan(conversation, u64::MAX, RocksDirection::Reverse, n)
    }
    fn range(&self, conversation: u64, from: u64, n: usize) -> u64 {
        self.scan(conversation, from, RocksDirection::Forward, n)
    }
    fn settle(&self) {
        self.db.flush().unwrap_or_else(|e| bench_error("flush", e));
        self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
    }
}

/// SQLite (bundled), WAL mode with `synchronous=FULL` (fsync per commit),
/// table `messages` with primary key (conversation, seq), seq assigned in
/// the insert as `MAX(seq) + 1`. A pool of connections, one per concurrent
/// writer, as an application would use.
pub struct Sqlite {
    pool: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
}

impl Sqlite {
    /// Creates the database file in `dir`.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join("messages.sqlite");
        let s = Sqlite {
            pool: Mutex::new(Vec::new()),
            path,
        };
        let conn = s.connect();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS messages (
                conversation INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                sender INTEGER NOT NULL,
                ts INTEGER NOT NULL,
                client_msg_id TEXT NOT NULL,
                payload BLOB NOT NULL,
                PRIMARY KEY (conversation, seq)
            ) WITHOUT ROWID;",
        )
        .unwrap_or_else(|e| bench_error("create table", e));
        s.give_back(conn);
        s
    }

    fn connect(&self) -> Connection {
        let conn = Connection::open(&self.path).unwrap_or_else(|e| bench_error("open", e));
        conn.busy_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| bench_error("busy_timeout", e));
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-262144;",
        )
        .unwrap_or_else(|e| bench_error("pragma", e));
        conn
    }

    fn take(&self) -> Connection {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        pooled.unwrap_or_else(|| self.connect())
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut p) = self.pool.lock() {
            p.push(conn);
        }
    }

    const INSERT: &'static str = "INSERT INTO messages (conversation, seq, sender, ts, client_msg_id, payload)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation = ?1), ?2, ?3, ?4, ?5)
         RETURNING seq";

    fn insert(conn: &Connection, m: &Msg) -> u64 {
        let mut stmt = conn
            .prepare_cached(Self::INSERT)
            .unwrap_or_else(|e| bench_error("prepare", e));
        stmt.query_row(
            params![
                m.conversation as i64,
                m.sender as i64,
                m.timestamp_ms as i64,
                m.client_msg_id,
                m.payload
            ],
            |row| row.get::<_, i64>(0),
        )
        .unwrap_or_else(|e| bench_error("insert", e)) as u64
    }

    fn fold_rows(conn: &Connection, sql: &str, a: i64, b: i64) -> u64 {
        let mut stmt = conn
            .prepare_cached(sql)
            .unwrap_or_else(|e| bench_error("prepare", e));
        let mut rows = stmt
            .query(params![a, b])
            .unwrap_or_else(|e| bench_error("query", e));
        let mut acc = 0;
        while let Some(row) = rows.next().unwrap_or_else(|e| bench_error("row", e)) {
            let seq: i64 = row.get(0).unwrap_or_default();
            let payload = row
                .get_ref(1)
                .ok()
                .and_then(|v| v.as_blob().ok())
                .unwrap_or_default();
            acc ^= checksum(seq as u64, payload);
        }
        acc
    }
}

impl Timelines for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    fn append(&self, msg: &Msg) -> u64 {
        let conn = self.take();
        let seq = Self::insert(&conn, msg);
        self.give_back(conn);
        seq
    }
    fn append_batch(&self, msgs: &[Msg]) {
        let mut conn = self.take();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap_or_else(|e| bench_error("begin", e));
        for m in msgs {
            Self::insert(&tx, m);
        }
        tx.commit().unwrap_or_else(|e| bench_error("commit", e));
        self.give_back(conn);
    }
    fn latest(&self, conversation: u64, n: usize) -> u64 {
        let conn = self.take();
        let acc = Self::fold_rows(
            &conn,
            "SELECT seq, payload FROM messages WHERE conversation = ?1 ORDER BY seq DESC LIMIT ?2",
            conversation as i64,
            n as i64,
        );
        self.give_back(conn);
        acc
    }
    fn range(&self, conversation: u64, from: u64, n: usize) -> u64 {
        let conn = self.take();
        let mut stmt_sql = String::from(
            "SELECT seq, payload FROM messages WHERE conversation = ?1 AND seq >= ?2 ORDER BY seq LIMIT ",
        );
        stmt_sql.push_str(&n.to_string());
        let acc = Self::fold_rows(&conn, &stmt_sql, conversation as i64, from as i64);
        self.give_back(conn);
        acc
    }
    fn settle(&self) {
        let conn = self.take();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
            .unwrap_or_else(|e| bench_error("checkpoint", e));
        self.give_back(conn);
    }
}

impl Sqlite {
    /// `PRAGMA integrity_check` over the whole database (what an SQLite
    /// user runs to scrub it); panics unless it answers `ok`.
    pub fn integrity_check(&self) {
        let conn = self.take();
        let answer: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap_or_else(|e| bench_error("integrity_check", e));
        self.give_back(conn);
        assert_eq!(answer, "ok", "SQLite integrity_check");
    }

    /// An online, consistent copy of the database into the new file `to`
    /// (`VACUUM INTO`, SQLite's own backup of a live database).
    pub fn backup_to(&self, to: &Path) {
        let conn = self.take();
        conn.execute("VACUUM INTO ?1", [to.display().to_string()])
            .unwrap_or_else(|e| bench_error("VACUUM INTO", e));
        self.give_back(conn);
    }
}

/// Where bench data goes: `IMSTORE_BENCH_DIR`, else a directory next to
/// the cargo target dir, on a real disk (never tmpfs, where fsync is free).
pub fn bench_dir(name: &str) -> tempfile::TempDir {
    let root = std::env::var_os("IMSTORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let _ = std::fs::create_dir_all(&root);
    tempfile::Builder::new()
        .prefix(&format!("imstore-bench-{name}-"))
        .tempdir_in(root)
        .unwrap_or_else(|e| bench_error("tempdir", e))
}

/// A deterministic message: payload of `payload_len` bytes derived from
/// (conversation, n).
pub fn message(conversation: u64, sender: u64, n: u64, payload_len: usize) -> Msg {
    let mut payload = Vec::with_capacity(payload_len);
    let mut x = conversation.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n;
    while payload.len() < payload_len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.push(b'a' + (x % 26) as u8);
    }
    Msg {
        conversation,
        sender,
        client_msg_id: format!("{sender}-{n}"),
        payload,
        timestamp_ms: 1_700_000_000_000 + n,
    }
}
