//! The database schema and its migrations, numbered by SQLite's
//! `PRAGMA user_version`. A database from before versioning (version 0
//! with a `vms` table) is the first version's schema.

use rusqlite::Connection;

use super::StoreError;

/// Each migration moves the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 1: VMs and operations.
    "
    CREATE TABLE vms (
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
    CREATE TABLE operations (
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
    ",
    // 2: the disk strategy per VM (every earlier VM has a qcow2 overlay),
    // the VMM's start time beside its pid, the owner's uid.
    "
    ALTER TABLE vms ADD COLUMN disk_strategy TEXT NOT NULL DEFAULT 'qcow2';
    ALTER TABLE vms ADD COLUMN pid_start INTEGER;
    ALTER TABLE vms ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT 0;
    ",
    // 3: the image version each VM was made from. Earlier VMs were made
    // from an image built before versions: version 0, whose files stay
    // where their disks point (`layout::LEGACY_IMAGE_VERSION`).
    "
    ALTER TABLE vms ADD COLUMN image_version INTEGER NOT NULL DEFAULT 0;
    ",
    // 4: the template a VM was restored from (its root disk is made over
    // the template's disk, which stays while the VM does).
    "
    ALTER TABLE vms ADD COLUMN template TEXT;
    ",
    // 5: when the daemon deletes the VM (`vm create --ttl`); none before.
    "
    ALTER TABLE vms ADD COLUMN expires_at INTEGER;
    ",
];

/// The schema version this build writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`VERSION`], one transaction per step.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let mut version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 && has_table(conn, "vms")? {
        version = 1; // written before the schema had a version
    }
    if version > VERSION {
        return Err(StoreError::Corrupt(format!(
            "the state database has schema version {version}, newer than this banger ({VERSION}); run the newer banger"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use banger_api::VmState;

    /// The schema as banger wrote it before versioning, verbatim.
    const UNVERSIONED: &str = "
CREATE TABLE IF NOT EXISTS vms (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, slot INTEGER NOT NULL UNIQUE,
    ip TEXT NOT NULL UNIQUE, mac TEXT NOT NULL UNIQUE, tap TEXT NOT NULL UNIQUE,
    vmm TEXT NOT NULL, cpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL,
    disk_gib INTEGER NOT NULL, image TEXT NOT NULL, nat INTEGER NOT NULL,
    created_at INTEGER NOT NULL, pid INTEGER, last_error TEXT, workspace TEXT
);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, vm TEXT, state TEXT NOT NULL,
    phase TEXT NOT NULL, progress INTEGER NOT NULL, started_at INTEGER NOT NULL,
    ended_at INTEGER, error TEXT
);
INSERT INTO vms VALUES ('old', 'running', 3, '172.30.0.4', '02:62:67:00:00:03',
    'banger-tap3', 'qemu', 2, 2048, 8, 'default', 1, 1700000000, 4242, NULL,
    '{\"mode\":\"overlay\",\"head\":\"abc123\",\"readonly\":false,\"source\":\"/src/x\"}');
INSERT INTO operations VALUES ('op-1', 'vm_create', 'old', 'succeeded', 'ready',
    100, 1700000000, 1700000030, NULL);
";

    #[test]
    fn an_unversioned_database_is_upgraded_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(UNVERSIONED)
            .unwrap();
        let store = Store::open(&path).unwrap();
        let vm = store.get_vm("old").unwrap().unwrap();
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(
            (vm.slot, vm.ip.as_str(), vm.tap.as_str()),
            (3, "172.30.0.4", "banger-tap3")
        );
        assert_eq!(
            (vm.cpus, vm.memory_mib, vm.disk_gib, vm.nat),
            (2, 2048, 8, true)
        );
        assert_eq!(vm.disk, crate::disk::Strategy::Qcow2);
        assert_eq!(vm.runtime.map(|r| (r.pid, r.start_time)), Some((4242, 0)));
        assert_eq!(vm.owner_uid, 0);
        assert_eq!(vm.image_version, crate::layout::LEGACY_IMAGE_VERSION);
        assert_eq!(vm.workspace.unwrap().head, "abc123");
        assert_eq!(store.list_ops(5).unwrap()[0].id, "op-1");
        drop(store);
        // Opening again changes nothing.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_vms().unwrap().len(), 1);
        let conn = Connection::open(&path).unwrap();
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
    }

    #[test]
    fn vms_from_before_image_versions_are_on_the_image_built_before_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO vms (name, state, slot, ip, mac, tap, vmm, cpus, memory_mib,
                     disk_gib, image, nat, created_at, disk_strategy, owner_uid)
                 VALUES ('old', 'stopped', 1, '10.0.0.2', '02:00:00:00:00:01', 'tap1',
                     'qemu', 1, 512, 4, 'default', 0, 1700000000, 'qcow2', 1000);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let vm = store.get_vm("old").unwrap().unwrap();
        assert_eq!(
            (vm.image.as_str(), vm.image_version, vm.owner_uid),
            ("default", crate::layout::LEGACY_IMAGE_VERSION, 1000)
        );
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer than this banger"), "{err}");
    }
}
