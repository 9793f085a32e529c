//! PostgreSQL backend of the store (`vgpu control --store postgres://...`): a small connection pool, the
//! versioned migrations in `control/migrations/postgres/`, and the `KvStore` operations as SQL transactions.

use crate::store::{Batch, KvStore, Pairs, StoreError};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Migrations in order: (version, name, SQL). Never edit an applied one; add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "kv", include_str!("../migrations/postgres/0001_kv.sql"))];

/// Arbitrary constant naming the advisory lock replicas take while migrating.
const MIGRATION_LOCK: i64 = 0x7667_7075_0017;

/// Connections per control-plane process. Each handler holds one for a few queries at most.
const POOL_SIZE: usize = 12;

struct Conn {
    client: Client,
    /// The session's synchronous_commit: false after a lazy batch switched it off.
    sync_commit: bool,
    get: Statement,
    range: Statement,
    lock: Statement,
    upsert: Statement,
    insert: Statement,
    delete: Statement,
}

impl Conn {
    fn open(url: &str) -> Result<Conn, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(pg_err)?;
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("vgpu-control");
        let mut client = config.connect(NoTls).map_err(pg_err)?;
        let get = client.prepare("SELECT v FROM kv WHERE k = $1").map_err(pg_err)?;
        let range = client
            .prepare("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3")
            .map_err(pg_err)?;
        let lock = client
            .prepare("SELECT k, v FROM kv WHERE k = ANY($1) ORDER BY k FOR UPDATE")
            .map_err(pg_err)?;
        let upsert = client
            .prepare(
                "INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            )
            .map_err(pg_err)?;
        let insert = client
            .prepare("INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])")
            .map_err(pg_err)?;
        let delete = client.prepare("DELETE FROM kv WHERE k = ANY($1)").map_err(pg_err)?;
        Ok(Conn {
            client,
            sync_commit: true,
            get,
            range,
            lock,
            upsert,
            insert,
            delete,
        })
    }
}

fn pg_err(e: postgres::Error) -> StoreError {
    match e.code() {
        // Another transaction got there first: a unique key inserted, a serialization failure, a deadlock.
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Conflict
        }
        _ => StoreError::Backend(format!("postgres: {e}")),
    }
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

/// Connections opened on demand up to `POOL_SIZE`; a broken one is dropped and reopened by the next caller.
pub struct PgStore {
    url: String,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct Lease<'a> {
    store: &'a PgStore,
    conn: Option<Conn>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self.store.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.conn.take() {
            Some(c) if !c.client.is_closed() => st.idle.push(c),
            _ => st.open -= 1,
        }
        self.store.freed.notify_one();
    }
}

impl PgStore {
    /// Connects, applies pending migrations and returns the store.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        migrate(url)?;
        Ok(PgStore {
            url: url.to_string(),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    fn lease(&self) -> Result<Lease<'_>, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = st.idle.pop() {
                return Ok(Lease {
                    store: self,
                    conn: Some(c),
                });
            }
            if st.open < POOL_SIZE {
                st.open += 1;
                drop(st);
                return match Conn::open(&self.url) {
                    Ok(c) => Ok(Lease {
                        store: self,
                        conn: Some(c),
                    }),
                    Err(e) => {
                        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        st.open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let (s, timeout) = self
                .freed
                .wait_timeout(st, Duration::from_secs(10))
                .unwrap_or_else(|p| p.into_inner());
            st = s;
            if timeout.timed_out() && st.idle.is_empty() && st.open >= POOL_SIZE {
                return Err(StoreError::Backend("postgres: no free connection for 10 s".into()));
            }
        }
    }
}

impl Lease<'_> {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Backend("postgres: connection lost".into()))
    }
}

impl KvStore for PgStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut lease = self.lease()?;
        let c = lease.conn()?;
        let row = c.client.query_opt(&c.get, &[&key]).map_err(pg_err)?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        let mut lease = self.lease()?;
        let c = lease.conn()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c.client.query(&c.range, &[&start, &end, &limit]).map_err(pg_err)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let state = batch.final_state();
        let must_be_new: std::collections::BTreeSet<&Vec<u8>> = batch
            .expect
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        let (mut up_k, mut up_v, mut in_k, mut in_v, mut del) = (vec![], vec![], vec![], vec![], vec![]);
        for (k, v) in &state {
            match v {
                Some(v) if must_be_new.contains(k) => {
                    in_k.push(k.clone());
                    in_v.push(v.clone());
                }
                Some(v) => {
                    up_k.push(k.clone());
                    up_v.push(v.clone());
                }
                None => del.push(k.clone()),
            }
        }
        let mut lease = self.lease()?;
        let c = lease.conn()?;
        if c.sync_commit != batch.durable {
            // A lazy batch is still shared by every replica at once; only the fsync before acknowledging is
            // skipped. Switched per connection, only when it changes.
            let v = if batch.durable { "on" } else { "off" };
            c.client
                .batch_execute(&format!("SET synchronous_commit = {v}"))
                .map_err(pg_err)?;
            c.sync_commit = batch.durable;
        }
        if batch.expect.is_empty() && del.is_empty() && in_k.is_empty() {
            // Blind upserts: one statement is its own transaction, one round trip.
            if !up_k.is_empty() {
                c.client.execute(&c.upsert, &[&up_k, &up_v]).map_err(pg_err)?;
            }
            return Ok(());
        }
        let mut t = c.client.transaction().map_err(pg_err)?;
        if !batch.expect.is_empty() {
            let mut keys: Vec<Vec<u8>> = batch.expect.iter().map(|(k, _)| k.clone()).collect();
            keys.sort();
            keys.dedup();
            // Locks the rows that exist; a key expected absent is protected by the unique index when inserted.
            let rows = t.query(&c.lock, &[&keys]).map_err(pg_err)?;
            let current: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = rows
                .into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            for (k, want) in &batch.expect {
                if current.get(k) != want.as_ref() {
                    return Err(StoreError::Conflict);
                }
            }
        }
        if !in_k.is_empty() {
            t.execute(&c.insert, &[&in_k, &in_v]).map_err(pg_err)?;
        }
        if !up_k.is_empty() {
            t.execute(&c.upsert, &[&up_k, &up_v]).map_err(pg_err)?;
        }
        if !del.is_empty() {
            t.execute(&c.delete, &[&del]).map_err(pg_err)?;
        }
        t.commit().map_err(pg_err)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

/// Applies every migration not yet recorded in `vgpu_migrations`, each in its own transaction, holding an
/// advisory lock so replicas that start together apply each exactly once.
fn migrate(url: &str) -> Result<(), StoreError> {
    let mut config: postgres::Config = url.parse().map_err(pg_err)?;
    config.connect_timeout(Duration::from_secs(5));
    let mut client = config.connect(NoTls).map_err(pg_err)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_err)?;
    let result = (|| {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS vgpu_migrations (version integer PRIMARY KEY, name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .map_err(pg_err)?;
        let done: Vec<i32> = client
            .query("SELECT version FROM vgpu_migrations", &[])
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(newest) = done.iter().max() {
            let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
            if *newest > known {
                return Err(StoreError::NewerSchema {
                    found: u32::try_from(*newest).unwrap_or(0),
                    supported: u32::try_from(known).unwrap_or(0),
                });
            }
        }
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            let mut t = client.transaction().map_err(pg_err)?;
            t.batch_execute(sql).map_err(pg_err)?;
            t.execute(
                "INSERT INTO vgpu_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .map_err(pg_err)?;
            t.commit().map_err(pg_err)?;
        }
        Ok(())
    })();
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}
