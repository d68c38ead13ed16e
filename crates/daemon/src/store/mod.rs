//! The SQLite state store: VMs (with their slot, IP and MAC from the pool)
//! and operations. Every write is one transaction; state changes are
//! compare-and-set ([`Store::transition`]).

mod schema;
mod vms;

use std::path::Path;
use std::sync::Mutex;

use banger_api::{OpInfo, OpState, VmState};
use rusqlite::{params, Connection};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a VM named {0:?} already exists; pick another name or delete it first")]
    Duplicate(String),
    #[error("no free address left in the subnet; delete a VM or use a larger --subnet")]
    PoolExhausted,
    /// A compare-and-set found another state than the one it expected.
    #[error("VM {name:?} is {found}, not {expected} as this operation expected; try again")]
    Conflict {
        name: String,
        expected: VmState,
        found: String,
    },
    #[error("state database: {0}")]
    Corrupt(String),
}

/// Addresses handed to a new VM by [`Store::insert_vm`].
pub trait AddressPlan {
    /// Highest usable slot (slots start at 1).
    fn max_slot(&self) -> u32;
    fn ip(&self, slot: u32) -> String;
    fn mac(&self, slot: u32) -> String;
    fn tap(&self, slot: u32) -> String;
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::from_conn(Connection::open(path)?)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_conn(Connection::open_in_memory()?)
    }

    fn from_conn(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert_op(&self, op: &OpInfo) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO operations (id, kind, vm, state, phase, progress, started_at, ended_at, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                op.id,
                op.kind,
                op.vm,
                op_state_str(op.state),
                op.phase,
                op.progress,
                op.started_at,
                op.ended_at,
                op.error
            ],
        )?;
        Ok(())
    }

    pub fn update_op_phase(&self, id: &str, phase: &str, progress: u8) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE operations SET phase = ?2, progress = ?3 WHERE id = ?1",
            params![id, phase, progress],
        )?;
        Ok(())
    }

    /// Records how an operation ended (`error` is None on success).
    pub fn finish_op(
        &self,
        id: &str,
        state: OpState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE operations SET state = ?2, ended_at = ?3, error = ?4,
                    progress = CASE WHEN ?4 IS NULL THEN 100 ELSE progress END
             WHERE id = ?1",
            params![id, op_state_str(state), now(), error],
        )?;
        Ok(())
    }

    /// Marks operations a dead daemon left running as failed.
    pub fn fail_interrupted_ops(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE operations SET state = 'failed', ended_at = ?1,
                    error = 'interrupted: the daemon stopped during this operation'
             WHERE state = 'running'",
            [now()],
        )?)
    }

    pub fn list_ops(&self, limit: u32) -> Result<Vec<OpInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, kind, vm, state, phase, progress, started_at, ended_at, error
             FROM operations ORDER BY started_at DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(OpInfo {
                id: r.get(0)?,
                kind: r.get(1)?,
                vm: r.get(2)?,
                state: match r.get::<_, String>(3)?.as_str() {
                    "running" => OpState::Running,
                    "succeeded" => OpState::Succeeded,
                    "cancelled" => OpState::Cancelled,
                    _ => OpState::Failed,
                },
                phase: r.get(4)?,
                progress: r.get(5)?,
                started_at: r.get(6)?,
                ended_at: r.get(7)?,
                error: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn op_state_str(s: OpState) -> &'static str {
    match s {
        OpState::Running => "running",
        OpState::Succeeded => "succeeded",
        OpState::Failed => "failed",
        OpState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_operations_are_marked_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            s.insert_op(&OpInfo {
                id: "op1".into(),
                kind: "vm_start".into(),
                vm: Some("a".into()),
                state: OpState::Running,
                phase: "boot".into(),
                progress: 10,
                started_at: 1,
                ended_at: None,
                error: None,
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.fail_interrupted_ops().unwrap(), 1);
        let ops = s.list_ops(10).unwrap();
        assert_eq!(ops[0].state, OpState::Failed);
        assert!(ops[0].error.as_deref().unwrap().contains("interrupted"));
    }
}
