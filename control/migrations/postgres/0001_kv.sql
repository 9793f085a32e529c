-- 0001: the control plane's records. Every collection lives in one ordered key-value table, so both stores
-- (sled, PostgreSQL) share one layout and one implementation of the API's rules; the layout of keys and values
-- is versioned separately (meta/schema_version, control/src/layout.rs). Keys compare as bytes (memcmp), the
-- order sled uses, which range scans and paging rely on.
CREATE TABLE kv (
    k bytea PRIMARY KEY,
    v bytea NOT NULL
);
-- Heartbeat records are rewritten every few seconds: leave room on each page for HOT updates.
ALTER TABLE kv SET (fillfactor = 80);
