//! The SQLite state store: VMs (with their slot, IP and MAC from the pool)
//! and operations. Every write is one transaction.

use std::path::Path;
use std::sync::Mutex;

use banger_api::types::WorkspaceInfo;
use banger_api::{OpInfo, OpState, VmInfo, VmState};
use rusqlite::{params, Connection, OptionalExtension, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a VM named {0:?} already exists; pick another name or delete it first")]
    Duplicate(String),
    #[error("no free address left in the subnet; delete a VM or use a larger --subnet")]
    PoolExhausted,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vms (
    name        TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    slot        INTEGER NOT NULL UNIQUE,
    ip          TEXT NOT NULL UNIQUE,
    mac         TEXT NOT NULL UNIQUE,
    tap         TEXT NOT NULL UNIQUE,
    vmm         TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_gib    INTEGER NOT NULL,
    image       TEXT NOT NULL,
    nat         INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    pid         INTEGER,
    last_error  TEXT,
    workspace   TEXT
);
CREATE TABLE IF NOT EXISTS operations (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    vm          TEXT,
    state       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    progress    INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    error       TEXT
);
";

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

    fn from_conn(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a VM in `creating`, taking the lowest free slot and the IP,
    /// MAC and tap that go with it, in one transaction.
    pub fn insert_vm(&self, vm: &VmInfo, plan: &dyn AddressPlan) -> Result<VmInfo, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM vms WHERE name = ?1", [&vm.name], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            return Err(StoreError::Duplicate(vm.name.clone()));
        }
        let used: Vec<u32> = tx
            .prepare("SELECT slot FROM vms ORDER BY slot")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let slot = (1..=plan.max_slot())
            .find(|s| !used.contains(s))
            .ok_or(StoreError::PoolExhausted)?;
        let mut vm = vm.clone();
        vm.slot = slot;
        vm.ip = plan.ip(slot);
        vm.mac = plan.mac(slot);
        vm.tap = plan.tap(slot);
        vm.state = VmState::Creating;
        tx.execute(
            "INSERT INTO vms (name, state, slot, ip, mac, tap, vmm, cpus, memory_mib, disk_gib,
                              image, nat, created_at, pid, last_error, workspace)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL, NULL, NULL)",
            params![
                vm.name,
                vm.state.as_str(),
                vm.slot,
                vm.ip,
                vm.mac,
                vm.tap,
                vm.vmm,
                vm.cpus,
                vm.memory_mib,
                vm.disk_gib,
                vm.image,
                vm.nat,
                vm.created_at
            ],
        )?;
        tx.commit()?;
        Ok(vm)
    }

    pub fn get_vm(&self, name: &str) -> Result<Option<VmInfo>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT * FROM vms WHERE name = ?1", [name], vm_from_row)
            .optional()?)
    }

    pub fn list_vms(&self) -> Result<Vec<VmInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT * FROM vms ORDER BY created_at, name")?;
        let rows = stmt.query_map([], vm_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a state change; `pid` is kept only while running.
    pub fn set_state(
        &self,
        name: &str,
        state: VmState,
        pid: Option<u32>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET state = ?2, pid = ?3, last_error = ?4 WHERE name = ?1",
            params![name, state.as_str(), pid, error],
        )?;
        Ok(())
    }

    pub fn set_workspace(&self, name: &str, ws: Option<&WorkspaceInfo>) -> Result<(), StoreError> {
        let json = ws.map(|w| serde_json::to_string(w).unwrap_or_default());
        self.conn().execute(
            "UPDATE vms SET workspace = ?2 WHERE name = ?1",
            params![name, json],
        )?;
        Ok(())
    }

    pub fn delete_vm(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM vms WHERE name = ?1", [name])?;
        Ok(())
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

    pub fn finish_op(&self, id: &str, error: Option<&str>) -> Result<(), StoreError> {
        let state = if error.is_some() {
            OpState::Failed
        } else {
            OpState::Succeeded
        };
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
    }
}

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<VmInfo> {
    let state: String = r.get("state")?;
    let workspace: Option<String> = r.get("workspace")?;
    Ok(VmInfo {
        name: r.get("name")?,
        state: VmState::parse(&state).unwrap_or(VmState::Error),
        slot: r.get("slot")?,
        ip: r.get("ip")?,
        mac: r.get("mac")?,
        tap: r.get("tap")?,
        vmm: r.get("vmm")?,
        cpus: r.get("cpus")?,
        memory_mib: r.get("memory_mib")?,
        disk_gib: r.get("disk_gib")?,
        image: r.get("image")?,
        nat: r.get("nat")?,
        created_at: r.get("created_at")?,
        pid: r.get("pid")?,
        last_error: r.get("last_error")?,
        workspace: workspace.and_then(|w| serde_json::from_str(&w).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plan;
    impl AddressPlan for Plan {
        fn max_slot(&self) -> u32 {
            3
        }
        fn ip(&self, slot: u32) -> String {
            format!("10.0.0.{}", slot + 1)
        }
        fn mac(&self, slot: u32) -> String {
            format!("02:00:00:00:00:{slot:02x}")
        }
        fn tap(&self, slot: u32) -> String {
            format!("tap{slot}")
        }
    }

    pub(crate) fn sample(name: &str) -> VmInfo {
        VmInfo {
            name: name.into(),
            state: VmState::Creating,
            ip: String::new(),
            mac: String::new(),
            tap: String::new(),
            slot: 0,
            vmm: "qemu".into(),
            cpus: 1,
            memory_mib: 512,
            disk_gib: 4,
            image: "default".into(),
            nat: false,
            created_at: 1,
            pid: None,
            last_error: None,
            workspace: None,
        }
    }

    #[test]
    fn slots_are_never_handed_out_twice_and_are_reused_after_delete() {
        let s = Store::open_in_memory().unwrap();
        let a = s.insert_vm(&sample("a"), &Plan).unwrap();
        let b = s.insert_vm(&sample("b"), &Plan).unwrap();
        assert_eq!((a.slot, b.slot), (1, 2));
        assert_ne!(a.ip, b.ip);
        assert_ne!(a.mac, b.mac);
        s.delete_vm("a").unwrap();
        let c = s.insert_vm(&sample("c"), &Plan).unwrap();
        assert_eq!(c.slot, 1);
        assert_eq!(c.ip, "10.0.0.2");
    }

    #[test]
    fn duplicate_names_and_exhaustion_are_refused_without_change() {
        let s = Store::open_in_memory().unwrap();
        s.insert_vm(&sample("a"), &Plan).unwrap();
        assert!(matches!(
            s.insert_vm(&sample("a"), &Plan),
            Err(StoreError::Duplicate(_))
        ));
        s.insert_vm(&sample("b"), &Plan).unwrap();
        s.insert_vm(&sample("c"), &Plan).unwrap();
        assert!(matches!(
            s.insert_vm(&sample("d"), &Plan),
            Err(StoreError::PoolExhausted)
        ));
        assert_eq!(s.list_vms().unwrap().len(), 3);
    }

    #[test]
    fn state_and_ops_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            s.insert_vm(&sample("a"), &Plan).unwrap();
            s.set_state("a", VmState::Running, Some(42), None).unwrap();
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
        let vm = s.get_vm("a").unwrap().unwrap();
        assert_eq!((vm.state, vm.pid), (VmState::Running, Some(42)));
        assert_eq!(s.fail_interrupted_ops().unwrap(), 1);
        let ops = s.list_ops(10).unwrap();
        assert_eq!(ops[0].state, OpState::Failed);
        assert!(ops[0].error.as_deref().unwrap().contains("interrupted"));
    }
}
