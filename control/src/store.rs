//! Persistent storage of the control plane: a narrow ordered key-value trait with conditional atomic commits,
//! its sled and in-memory backends (PostgreSQL is in `pg.rs`), and a typed JSON layer with paging on top.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store has schema version {found}, this build understands up to {supported}")]
    NewerSchema { found: u32, supported: u32 },
    /// A condition of a commit did not hold (another writer changed a record this one read): nothing was
    /// written; the caller reads again and retries.
    #[error("concurrent update, retry")]
    Conflict,
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
pub enum WriteOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// One atomic write: every `expect` must hold (the key holds exactly that value, or is absent for `None`),
/// then every op applies, or nothing does (`StoreError::Conflict`).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub expect: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub ops: Vec<WriteOp>,
    /// Acknowledge only once on disk. Heartbeats and failure counters are not: losing the last second of
    /// them in a crash is harmless, and waiting for the disk would cap their rate.
    pub durable: bool,
}

impl Batch {
    /// The ops reduced to the final state of each key (later ops win), in key order.
    pub fn final_state(&self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut m = BTreeMap::new();
        for op in &self.ops {
            match op {
                WriteOp::Put(k, v) => m.insert(k.clone(), Some(v.clone())),
                WriteOp::Delete(k) => m.insert(k.clone(), None),
            };
        }
        m
    }
}

/// Narrow on purpose: point reads, bounded range scans and one conditional atomic batch. Any ordered KV engine
/// with transactions (sled, PostgreSQL, FoundationDB, TiKV) implements it.
pub trait KvStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// At most `limit` pairs with `start <= key < end`, in key order.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Pairs, StoreError>;
    /// Applies the batch atomically if its conditions hold; returns once durable when `batch.durable`.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    fn backend(&self) -> &'static str;
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// In-memory backend for unit tests and `--store memory`.
#[derive(Default)]
pub struct MemStore {
    map: Mutex<Map>,
}

impl MemStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Map>, StoreError> {
        self.map
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(key).cloned())
    }
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        let map = self.lock()?;
        Ok(map
            .range(start.to_vec()..end.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.lock()?;
        for (k, want) in &batch.expect {
            if map.get(k) != want.as_ref() {
                return Err(StoreError::Conflict);
            }
        }
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// sled 0.34 backend. One tree holds every collection (keys are prefixed), so a transaction spans them all;
/// sled's transactions are optimistic, so writers to different keys never wait for each other.
pub struct SledStore {
    db: sled::Db,
    group: GroupCommit,
}

/// Group commit: writers that applied their batch wait for one flush that started after they applied; one of
/// them runs it for all, so concurrent durable commits share an fsync instead of queueing one each.
#[derive(Default)]
struct GroupCommit {
    /// (batches applied, batches known durable, a flush is running)
    state: Mutex<(u64, u64, bool)>,
    done: std::sync::Condvar,
}

impl GroupCommit {
    fn applied(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        st.0
    }

    fn wait_durable(&self, seq: u64, flush: impl Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.1 >= seq {
                return Ok(());
            }
            if !st.2 {
                st.2 = true;
                let target = st.0;
                drop(st);
                let r = flush();
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.2 = false;
                if r.is_ok() {
                    st.1 = st.1.max(target);
                }
                self.done.notify_all();
                r?;
            } else {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SledStore {
            db,
            group: GroupCommit::default(),
        })
    }
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl KvStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        self.db
            .range(start.to_vec()..end.to_vec())
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err))
            .collect()
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let state = batch.final_state();
        if batch.expect.is_empty() {
            // Blind writes need no transaction: one atomic batch is cheaper.
            let mut b = sled::Batch::default();
            for (k, v) in &state {
                match v {
                    Some(v) => b.insert(k.as_slice(), v.as_slice()),
                    None => b.remove(k.as_slice()),
                }
            }
            self.db.apply_batch(b).map_err(sled_err)?;
            let seq = self.group.applied();
            if batch.durable {
                self.group
                    .wait_durable(seq, || self.db.flush().map(|_| ()).map_err(sled_err))?;
            }
            return Ok(());
        }
        let result = self.db.transaction(|tx| {
            for (k, want) in &batch.expect {
                let cur = tx.get(k.as_slice())?;
                if cur.as_deref() != want.as_deref() {
                    return Err(ConflictableTransactionError::Abort(()));
                }
            }
            for (k, v) in &state {
                match v {
                    Some(v) => {
                        tx.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        tx.remove(k.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => return Err(StoreError::Conflict),
            Err(TransactionError::Storage(e)) => return Err(sled_err(e)),
        }
        let seq = self.group.applied();
        if batch.durable {
            // sled only guarantees durability after flush; the API acknowledges a write only after this returns.
            self.group
                .wait_durable(seq, || self.db.flush().map(|_| ()).map_err(sled_err))?;
        }
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "sled"
    }
}

/// Which engine `open_backend` builds, parsed from `--store`: `sled` (default), `memory`, or a
/// `postgres://` / `postgresql://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Memory,
    Postgres(String),
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sled" => Ok(Backend::Sled),
            "memory" => Ok(Backend::Memory),
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(Backend::Postgres(u.into())),
            other => Err(format!(
                "unknown store `{other}`: use sled, memory or a postgres://user@host/db URL"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sled => write!(f, "sled"),
            Backend::Memory => write!(f, "memory"),
            // Never print a password that may be in the URL.
            Backend::Postgres(_) => write!(f, "postgres"),
        }
    }
}

pub fn open_backend(kind: &Backend, data_dir: &Path) -> Result<Box<dyn KvStore>, StoreError> {
    match kind {
        Backend::Sled => Ok(Box::new(SledStore::open(&data_dir.join("sled"))?)),
        Backend::Memory => Ok(Box::new(MemStore::default())),
        Backend::Postgres(url) => Ok(Box::new(crate::pg::PgStore::connect(url)?)),
    }
}

/// Typed view: every value is a JSON document under a `collection/id` key.
pub struct Db {
    kv: Box<dyn KvStore>,
}

/// Writes gathered by a handler and committed as one atomic batch, with the conditions under which they apply.
pub struct Tx {
    batch: Batch,
}

impl Default for Tx {
    fn default() -> Self {
        Tx {
            batch: Batch {
                durable: true,
                ..Batch::default()
            },
        }
    }
}

impl Tx {
    /// A batch acknowledged before it reaches the disk (heartbeats, counters).
    pub fn lazy() -> Tx {
        Tx {
            batch: Batch::default(),
        }
    }
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.batch.ops.push(WriteOp::Put(key.as_bytes().to_vec(), bytes));
        Ok(())
    }
    pub fn delete(&mut self, key: &str) {
        self.batch.ops.push(WriteOp::Delete(key.as_bytes().to_vec()));
    }
    /// Commit only if `key` still does not exist (uniqueness: names, idempotency ids).
    pub fn expect_absent(&mut self, key: &str) {
        self.batch.expect.push((key.as_bytes().to_vec(), None));
    }
    /// Commit only if `key` still holds exactly the bytes read (`Versioned::raw`), or is still absent.
    pub fn expect(&mut self, key: &str, raw: Option<&[u8]>) {
        self.batch
            .expect
            .push((key.as_bytes().to_vec(), raw.map(<[u8]>::to_vec)));
    }
    pub fn is_empty(&self) -> bool {
        self.batch.ops.is_empty()
    }
    /// Acknowledge this batch only once durable after all.
    pub fn make_durable(&mut self) {
        self.batch.durable = true;
    }
}

/// A record with the exact bytes it was read as, for `Tx::expect`.
pub struct Versioned<T> {
    pub value: T,
    pub raw: Vec<u8>,
}

/// One page of a listing: the records and, when more may follow, the cursor to ask for next.
pub struct Page<T> {
    pub items: Vec<(String, T)>,
    pub next: Option<String>,
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

impl Db {
    pub fn new(kv: Box<dyn KvStore>) -> Db {
        Db { kv }
    }

    pub fn backend(&self) -> &'static str {
        self.kv.backend()
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.kv.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(key.as_bytes(), &bytes).map(Some),
        }
    }

    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(key.as_bytes())
    }

    pub fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        match self.kv.get(key.as_bytes())? {
            None => Ok(None),
            Some(raw) => Ok(Some(Versioned {
                value: decode(key.as_bytes(), &raw)?,
                raw,
            })),
        }
    }

    /// Up to `limit` records under `prefix` with keys after `after` (a key suffix from a previous page).
    pub fn page<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, StoreError> {
        let raw = self.page_raw(prefix, after, limit)?;
        let mut items = Vec::with_capacity(raw.items.len());
        for (k, v) in raw.items {
            let full = format!("{prefix}{k}");
            items.push((k, decode(full.as_bytes(), &v)?));
        }
        Ok(Page { items, next: raw.next })
    }

    /// Like `page`, values left as bytes (index entries whose key is the information).
    pub fn page_raw(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page<Vec<u8>>, StoreError> {
        let start = match after {
            // The smallest key after `prefix + after`.
            Some(a) => {
                let mut s = format!("{prefix}{a}").into_bytes();
                s.push(0);
                s
            }
            None => prefix.as_bytes().to_vec(),
        };
        let end = prefix_end(prefix.as_bytes());
        let limit = limit.max(1);
        let mut pairs = self.kv.range(&start, &end, limit + 1)?;
        let more = pairs.len() > limit;
        pairs.truncate(limit);
        let items: Vec<(String, Vec<u8>)> = pairs
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v))
            .collect();
        let next = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Every record under `prefix`, for collections that stay small (plans, one tenant's keys); refuses past
    /// `cap` records rather than growing without bound.
    pub fn list_small<T: DeserializeOwned>(&self, prefix: &str, cap: usize) -> Result<Vec<T>, StoreError> {
        let p = self.page::<T>(prefix, None, cap)?;
        if p.next.is_some() {
            return Err(StoreError::Backend(format!("more than {cap} records under {prefix}")));
        }
        Ok(p.items.into_iter().map(|(_, v)| v).collect())
    }

    /// Keys (suffixes after `prefix`) of up to `cap` index entries.
    pub fn index_keys(&self, prefix: &str, cap: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .page_raw(prefix, None, cap)?
            .items
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    pub fn commit(&self, tx: Tx) -> Result<(), StoreError> {
        if tx.batch.ops.is_empty() {
            return Ok(());
        }
        self.kv.commit(tx.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_orders_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert!(b"a/zzzz".to_vec() < prefix_end(b"a/"));
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_panic() {
        let kv = MemStore::default();
        kv.commit(Batch {
            ops: vec![WriteOp::Put(b"t/1".to_vec(), b"{not json".to_vec())],
            ..Batch::default()
        })
        .expect("commit");
        let db = Db::new(Box::new(kv));
        assert!(matches!(db.get::<String>("t/1"), Err(StoreError::Corrupt { .. })));
    }
}
