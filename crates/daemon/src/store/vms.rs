//! VM rows: insert with an address from the pool, read, compare-and-set
//! state changes, workspace, delete.

use banger_api::types::WorkspaceInfo;
use banger_api::VmState;
use rusqlite::{params, OptionalExtension, Row};

use super::{AddressPlan, Store, StoreError};
use crate::disk::Strategy;
use crate::vm::VmRecord;
use crate::vmm::RuntimeHandle;

impl Store {
    /// Inserts a VM in `creating`, taking the lowest free slot and the IP,
    /// MAC and tap that go with it, in one transaction.
    pub fn insert_vm(
        &self,
        draft: &VmRecord,
        plan: &dyn AddressPlan,
    ) -> Result<VmRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists = tx
            .query_row("SELECT 1 FROM vms WHERE name = ?1", [&draft.name], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        if exists {
            return Err(StoreError::Duplicate(draft.name.clone()));
        }
        let used: Vec<u32> = tx
            .prepare("SELECT slot FROM vms ORDER BY slot")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let slot = (1..=plan.max_slot())
            .find(|s| !used.contains(s))
            .ok_or(StoreError::PoolExhausted)?;
        let vm = VmRecord {
            slot,
            ip: plan.ip(slot),
            mac: plan.mac(slot),
            tap: plan.tap(slot),
            state: VmState::Creating,
            runtime: None,
            ..draft.clone()
        };
        tx.execute(
            "INSERT INTO vms (name, state, slot, ip, mac, tap, vmm, cpus, memory_mib, disk_gib,
                              image, nat, created_at, disk_strategy, owner_uid, image_version,
                              template)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                vm.name,
                vm.state.as_str(),
                vm.slot,
                vm.ip,
                vm.mac,
                vm.tap,
                vm.backend,
                vm.cpus,
                vm.memory_mib,
                vm.disk_gib,
                vm.image,
                vm.nat,
                vm.created_at,
                vm.disk.as_str(),
                vm.owner_uid,
                vm.image_version,
                vm.template,
            ],
        )?;
        tx.commit()?;
        Ok(vm)
    }

    /// Records that `name`'s root disk is made over `template` (or, after
    /// a restore that fell back to a cold boot, over the image).
    pub fn set_template(&self, name: &str, template: Option<&str>) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET template = ?2 WHERE name = ?1",
            params![name, template],
        )?;
        Ok(())
    }

    /// The templates some VM's root disk is made over.
    pub fn templates_in_use(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn()
            .prepare("SELECT DISTINCT template FROM vms WHERE template IS NOT NULL")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    pub fn get_vm(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT * FROM vms WHERE name = ?1", [name], vm_from_row)
            .optional()?)
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT * FROM vms ORDER BY created_at, name")?;
        let rows = stmt.query_map([], vm_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves `name` from `from` to `to` only if it is still in `from`,
    /// recording the runtime handle (kept only while it may run) and the
    /// error. Whether the change is valid is the caller's table's call
    /// (`vm::transition`); this makes it atomic.
    pub fn transition(
        &self,
        name: &str,
        from: VmState,
        to: VmState,
        runtime: Option<RuntimeHandle>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE vms SET state = ?3, pid = ?4, pid_start = ?5, last_error = ?6
             WHERE name = ?1 AND state = ?2",
            params![
                name,
                from.as_str(),
                to.as_str(),
                runtime.map(|r| r.pid),
                runtime.map(|r| r.start_time as i64),
                error
            ],
        )?;
        if changed == 1 {
            return Ok(());
        }
        let found: Option<String> = conn
            .query_row("SELECT state FROM vms WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        Err(StoreError::Conflict {
            name: name.to_string(),
            expected: from,
            found: found.unwrap_or_else(|| "deleted".into()),
        })
    }

    pub fn set_workspace(&self, name: &str, ws: Option<&WorkspaceInfo>) -> Result<(), StoreError> {
        let json = ws.map(|w| serde_json::to_string(w).unwrap_or_default());
        self.conn().execute(
            "UPDATE vms SET workspace = ?2 WHERE name = ?1",
            params![name, json],
        )?;
        Ok(())
    }

    /// Sets or clears when the daemon deletes `name` (see `vm::ttl`).
    pub fn set_expiry(&self, name: &str, expires_at: Option<i64>) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET expires_at = ?2 WHERE name = ?1",
            params![name, expires_at],
        )?;
        Ok(())
    }

    pub fn delete_vm(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM vms WHERE name = ?1", [name])?;
        Ok(())
    }
}

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<VmRecord> {
    let state: String = r.get("state")?;
    let workspace: Option<String> = r.get("workspace")?;
    let strategy: String = r.get("disk_strategy")?;
    let pid: Option<u32> = r.get("pid")?;
    let start: Option<i64> = r.get("pid_start")?;
    Ok(VmRecord {
        name: r.get("name")?,
        state: VmState::parse(&state).unwrap_or(VmState::Error),
        slot: r.get("slot")?,
        ip: r.get("ip")?,
        mac: r.get("mac")?,
        tap: r.get("tap")?,
        backend: r.get("vmm")?,
        disk: Strategy::parse(&strategy).unwrap_or(Strategy::Qcow2),
        runtime: pid.map(|pid| RuntimeHandle {
            pid,
            start_time: start.unwrap_or(0) as u64,
        }),
        cpus: r.get("cpus")?,
        memory_mib: r.get("memory_mib")?,
        disk_gib: r.get("disk_gib")?,
        image: r.get("image")?,
        image_version: r.get("image_version")?,
        nat: r.get("nat")?,
        created_at: r.get("created_at")?,
        last_error: r.get("last_error")?,
        workspace: workspace.and_then(|w| serde_json::from_str(&w).ok()),
        owner_uid: r.get("owner_uid")?,
        template: r.get("template")?,
        expires_at: r.get("expires_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::VmSpec;

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

    fn sample(name: &str) -> VmRecord {
        let spec = VmSpec {
            name: name.into(),
            cpus: 1,
            memory_mib: 512,
            disk_gib: 4,
            image: "default".into(),
            nat: false,
            authorized_keys: Vec::new(),
            cold: false,
            disk_strategy: None,
            ..Default::default()
        };
        VmRecord::draft(&spec, "qemu", Strategy::Qcow2, 1000)
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
        assert_eq!(s.get_vm("c").unwrap().unwrap(), c);
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
    fn transitions_are_compare_and_set_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let handle = RuntimeHandle {
            pid: 42,
            start_time: 777,
        };
        {
            let s = Store::open(&path).unwrap();
            s.insert_vm(&sample("a"), &Plan).unwrap();
            s.transition("a", VmState::Creating, VmState::Running, Some(handle), None)
                .unwrap();
            let lost = s.transition("a", VmState::Creating, VmState::Error, None, Some("x"));
            assert!(
                matches!(&lost, Err(StoreError::Conflict { found, .. }) if found == "running"),
                "{lost:?}"
            );
        }
        let s = Store::open(&path).unwrap();
        let vm = s.get_vm("a").unwrap().unwrap();
        assert_eq!((vm.state, vm.runtime), (VmState::Running, Some(handle)));
        assert_eq!(vm.owner_uid, 1000);
        s.delete_vm("a").unwrap();
        assert!(matches!(
            s.transition("a", VmState::Running, VmState::Stopped, None, None),
            Err(StoreError::Conflict { found, .. }) if found == "deleted"
        ));
    }
}
