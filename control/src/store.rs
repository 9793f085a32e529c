//! Persistent storage of the control plane: a narrow key-value trait, its sled and in-memory backends, and a
//! typed JSON layer with a versioned schema on top. Nothing outside this module knows which engine is used.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Version of the layout of keys and values. Bump it with a migration in `Db::open` when a record changes shape.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &str = "meta/schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store has schema version {found}, this build understands up to {supported}")]
    NewerSchema { found: u32, supported: u32 },
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
type Map = BTreeMap<Vec<u8>, Vec<u8>>;

pub enum WriteOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Narrow on purpose: point reads, prefix scans and one atomic, durable batch write. Any ordered KV engine
/// (redb, FoundationDB, TiKV) can implement it.
pub trait KvStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// All pairs whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError>;
    /// Applies every op atomically and returns only once they are durable (the API acknowledges after this).
    fn commit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;
    fn backend(&self) -> &'static str;
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
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let map = self.lock()?;
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn commit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut map = self.lock()?;
        for op in ops {
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

/// sled 0.34 backend. One tree holds every collection (keys are prefixed), so a batch is atomic across them.
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SledStore { db })
    }
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl KvStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err))
            .collect()
    }
    fn commit(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                WriteOp::Put(k, v) => batch.insert(k, v),
                WriteOp::Delete(k) => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(sled_err)?;
        // sled only guarantees durability after flush; the API acknowledges a write only after this returns.
        self.db.flush().map_err(sled_err)?;
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "sled"
    }
}

/// Which engine `open_backend` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sled,
    Memory,
}

pub fn open_backend(kind: Backend, data_dir: &Path) -> Result<Box<dyn KvStore>, StoreError> {
    match kind {
        Backend::Sled => Ok(Box::new(SledStore::open(&data_dir.join("sled"))?)),
        Backend::Memory => Ok(Box::new(MemStore::default())),
    }
}

/// Typed view: every value is a JSON document under a `collection/id` key.
pub struct Db {
    kv: Box<dyn KvStore>,
}

/// Writes gathered by a handler and committed as one atomic batch.
#[derive(Default)]
pub struct Tx {
    ops: Vec<WriteOp>,
}

impl Tx {
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.ops.push(WriteOp::Put(key.as_bytes().to_vec(), bytes));
        Ok(())
    }
    pub fn delete(&mut self, key: &str) {
        self.ops.push(WriteOp::Delete(key.as_bytes().to_vec()));
    }
}

impl Db {
    /// Opens the typed layer, writing the schema version into a new store and refusing a newer one.
    pub fn open(kv: Box<dyn KvStore>) -> Result<Db, StoreError> {
        let db = Db { kv };
        match db.get::<u32>(SCHEMA_KEY)? {
            None => {
                let mut tx = Tx::default();
                tx.put(SCHEMA_KEY, &SCHEMA_VERSION)?;
                db.commit(tx)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            // Version 1 is the first layout: nothing to migrate yet.
            Some(_) => {}
        }
        Ok(db)
    }

    pub fn backend(&self) -> &'static str {
        self.kv.backend()
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.get::<u32>(SCHEMA_KEY)?.unwrap_or(SCHEMA_VERSION))
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.kv.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    pub fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.kv
            .scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    pub fn commit(&self, tx: Tx) -> Result<(), StoreError> {
        if tx.ops.is_empty() {
            return Ok(());
        }
        self.kv.commit(tx.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(kv: Box<dyn KvStore>) {
        let db = Db::open(kv).expect("open");
        assert_eq!(db.schema_version().expect("schema"), SCHEMA_VERSION);
        let mut tx = Tx::default();
        tx.put("a/1", &"one").expect("put");
        tx.put("a/2", &"two").expect("put");
        tx.put("b/1", &"other").expect("put");
        db.commit(tx).expect("commit");
        assert_eq!(db.get::<String>("a/1").expect("get").as_deref(), Some("one"));
        assert_eq!(
            db.list::<String>("a/").expect("list"),
            vec!["one".to_string(), "two".to_string()]
        );
        let mut tx = Tx::default();
        tx.delete("a/1");
        db.commit(tx).expect("commit");
        assert_eq!(db.get::<String>("a/1").expect("get"), None);
        assert_eq!(db.list::<String>("a/").expect("list").len(), 1);
    }

    #[test]
    fn memory_roundtrip() {
        roundtrip(Box::new(MemStore::default()));
    }

    #[test]
    fn sled_roundtrip_and_reopen() {
        let dir = std::env::temp_dir().join(format!("vgpu-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        roundtrip(open_backend(Backend::Sled, &dir).expect("sled"));
        // Reopen: the data and the schema version must still be there.
        let db = Db::open(open_backend(Backend::Sled, &dir).expect("sled")).expect("reopen");
        assert_eq!(db.get::<String>("a/2").expect("get").as_deref(), Some("two"));
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn newer_schema_is_refused() {
        let kv = MemStore::default();
        kv.commit(vec![WriteOp::Put(SCHEMA_KEY.as_bytes().to_vec(), b"99".to_vec())])
            .expect("commit");
        assert!(matches!(
            Db::open(Box::new(kv)),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_panic() {
        let kv = MemStore::default();
        kv.commit(vec![WriteOp::Put(b"t/1".to_vec(), b"{not json".to_vec())])
            .expect("commit");
        let db = Db::open(Box::new(kv)).expect("open");
        assert!(matches!(db.get::<String>("t/1"), Err(StoreError::Corrupt { .. })));
    }
}
