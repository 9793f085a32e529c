//! Upkeep run on a schedule by every replica: expired sessions leave the live indexes, ended and expired ones
//! are deleted after the retention time, old end notices, failure counters and report ids go; and the
//! gauges `/metrics` shows. Each pass does a bounded amount of work; conflicts with requests only skip.

use crate::layout;
use crate::model::{Heartbeat, Session};
use crate::store::{Db, StoreError, Tx};
use serde_json::Value;

/// Index entries looked at per pass and collection.
const BATCH: usize = 500;
/// Usage report ids are remembered this long (a retry later than this would be counted again).
pub const REPORT_ID_KEEP_S: u64 = 30 * 86400;
/// Counting stops here: the gauges say "at least" past it rather than read a huge collection.
const COUNT_CAP: usize = 200_000;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pruned {
    /// Sessions deleted.
    pub sessions: usize,
    /// Expired sessions taken out of the live indexes.
    pub expired: usize,
    pub notices: usize,
    pub other: usize,
}

/// "<time:012>/<rest>" -> (time, rest).
fn split_due(k: &str) -> Option<(u64, &str)> {
    let (t, rest) = k.split_once('/')?;
    Some((t.parse().ok()?, rest))
}

/// One bounded pass. Returns what it removed.
pub fn prune(db: &Db, now: u64, retention: u64) -> Result<Pruned, StoreError> {
    let mut out = Pruned::default();
    let due = db.page_raw(layout::SESSION_GC, None, BATCH)?;
    let mut tx = Tx::default();
    for (k, _) in &due.items {
        let Some((at, sid)) = split_due(k) else {
            tx.delete(&format!("{}{k}", layout::SESSION_GC));
            continue;
        };
        if at > now {
            break;
        }
        match db.get_versioned::<Session>(&layout::session(sid))? {
            None => tx.delete(&format!("{}{k}", layout::SESSION_GC)),
            Some(cur) => {
                let s = cur.value.clone();
                tx.expect(&layout::session(sid), Some(&cur.raw));
                if layout::is_live_indexed(&s) {
                    let mut e = s.clone();
                    e.gc_at = s.expires_at.max(at) + retention;
                    layout::put_session(&mut tx, &e, Some(&s))?;
                    out.expired += 1;
                } else if s.gc_at == at {
                    layout::delete_session(&mut tx, &s);
                    out.sessions += 1;
                } else {
                    // A stale index entry (the session was re-indexed under a later time).
                    tx.delete(&format!("{}{k}", layout::SESSION_GC));
                }
            }
        }
    }
    commit_or_skip(db, tx)?;

    let due = db.page_raw(layout::END_NOTICE_GC, None, BATCH)?;
    let mut tx = Tx::default();
    for (k, _) in &due.items {
        match split_due(k) {
            Some((at, _)) if at > now => break,
            Some((_, rest)) => {
                if let Some((server, sid)) = rest.split_once('/') {
                    tx.delete(&layout::end_notice(server, sid));
                }
                out.notices += 1;
            }
            None => {}
        }
        tx.delete(&format!("{}{k}", layout::END_NOTICE_GC));
    }
    commit_or_skip(db, tx)?;
    Ok(out)
}

/// Deletes failure counters whose window is over and report ids older than `REPORT_ID_KEEP_S`, `BATCH` keys
/// per call from `cursor` on; returns the cursor to continue from (`None`: wrapped around).
pub fn sweep(
    db: &Db,
    now: u64,
    auth_window: u64,
    prefix: &str,
    cursor: Option<String>,
) -> Result<Option<String>, StoreError> {
    let page = db.page::<Value>(prefix, cursor.as_deref(), BATCH)?;
    let mut tx = Tx::lazy();
    for (k, v) in &page.items {
        let old = match prefix {
            "fail/" => {
                let start = v["window_start"].as_u64().unwrap_or(0);
                let until = v["blocked_until"].as_u64().unwrap_or(0);
                start + auth_window < now && until < now
            }
            _ => v["at"].as_u64().unwrap_or(0) + REPORT_ID_KEEP_S < now,
        };
        if old {
            tx.delete(&format!("{prefix}{k}"));
        }
    }
    commit_or_skip(db, tx)?;
    Ok(page.next)
}

fn commit_or_skip(db: &Db, tx: Tx) -> Result<(), StoreError> {
    match db.commit(tx) {
        // A request changed one of these sessions meanwhile: the next pass sees the new state.
        Ok(()) | Err(StoreError::Conflict) => Ok(()),
        Err(e) => Err(e),
    }
}

fn count(db: &Db, prefix: &str) -> f64 {
    let mut n = 0usize;
    let mut cursor: Option<String> = None;
    while n < COUNT_CAP {
        let Ok(page) = db.page_raw(prefix, cursor.as_deref(), 10_000) else {
            break;
        };
        n += page.items.len();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    n as f64
}

/// The gauges for `/metrics`, from bounded counts of index entries.
pub fn gauges(db: &Db, now: u64, heartbeat_timeout: u64) -> Vec<(&'static str, &'static str, f64)> {
    let mut online = 0usize;
    let mut cursor: Option<String> = None;
    let mut seen = 0usize;
    while seen < COUNT_CAP {
        let Ok(page) = db.page::<Heartbeat>("hb/", cursor.as_deref(), 10_000) else {
            break;
        };
        seen += page.items.len();
        online += page
            .items
            .iter()
            .filter(|(_, h)| now.saturating_sub(h.at) <= heartbeat_timeout)
            .count();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    vec![
        ("vgpu_control_tenants", "Tenants in the store.", count(db, "tenant/")),
        ("vgpu_control_servers", "Registered GPU servers.", count(db, "server/")),
        (
            "vgpu_control_servers_online",
            "GPU servers with a recent heartbeat.",
            online as f64,
        ),
        (
            "vgpu_control_gpus",
            "GPUs known to the control plane.",
            count(db, "gpu/"),
        ),
        (
            "vgpu_control_assignments",
            "Active GPU assignments.",
            count(db, "assign/"),
        ),
        (
            "vgpu_control_sessions_active",
            "Sessions not ended (expired ones leave at the next prune).",
            count(db, layout::LIVE_SESSIONS),
        ),
    ]
}
