//! The fake VMM: processes that live in the world; with templates on
//! (`World::enable_templates`), it saves and restores them, and a guest
//! agent answers.

use std::path::Path;
use std::time::Duration;

use super::{FakeProc, World};
use crate::vmm::qga::{AgentOutput, AgentRun};
use crate::vmm::{
    BootDrives, Capabilities, DiskFormat, Drive, KernelFormat, LaunchSpec, RuntimeHandle, Vmm,
    VmmError,
};

/// The file a fake snapshot writes into its directory.
const FAKE_STATE: &str = "fake-state";

/// A VMM whose processes live in the world; the guest shuts down at once
/// when asked.
pub struct FakeVmm(pub World);

impl FakeVmm {
    fn control_err(point: &str, e: String) -> VmmError {
        VmmError::Control(format!("{point}: {e}"))
    }

    /// A live fake VMM process for `spec`.
    fn spawn(&self, spec: &LaunchSpec) -> RuntimeHandle {
        let mut st = self.0.state();
        let pid = 1000 + st.procs.len() as u32;
        let handle = RuntimeHandle {
            pid,
            start_time: u64::from(pid) * 7,
        };
        st.procs.insert(
            pid,
            FakeProc {
                name: spec.name.clone(),
                start_time: handle.start_time,
                alive: true,
                control: spec.control_socket.clone(),
                drives: spec.drives.iter().map(|d| d.serial.clone()).collect(),
                kernel: spec.kernel.clone(),
            },
        );
        st.vmm_uids.insert(pid, spec.run_as.map(|(uid, _)| uid));
        handle
    }
}

impl Vmm for FakeVmm {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn version(&self) -> String {
        "fake 1".into()
    }
    fn capabilities(&self) -> Capabilities {
        let templates = self.0.state().templates;
        Capabilities {
            hotplug_drives: true,
            disk_formats: match templates {
                true => &[DiskFormat::Qcow2],
                false => &[DiskFormat::Raw],
            },
            kernels: &[KernelFormat::BzImage],
            needs_kvm: false,
            snapshots: templates,
        }
    }
    fn kernel_cmdline(&self, name: &str) -> String {
        format!("fake {name}")
    }
    fn drive_plan(&self, drives: BootDrives) -> Vec<Drive> {
        let mut plan = vec![drives.root, drives.config];
        plan.extend(drives.workspace);
        plan
    }
    fn stop_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn launch(&self, spec: &LaunchSpec) -> Result<RuntimeHandle, VmmError> {
        self.0.hit("vmm.launch").map_err(VmmError::Launch)?;
        let handle = self.spawn(spec);
        // Started, not yet answering: the daemon can die here too.
        if let Err(e) = self.0.hit("vmm.launch.started") {
            let _ = self.signal(&handle, libc::SIGKILL);
            return Err(VmmError::Launch(e));
        }
        Ok(handle)
    }
    fn snapshot(&self, _control_socket: &Path, dest: &Path) -> Result<(), VmmError> {
        self.0
            .hit("vmm.snapshot")
            .map_err(|e| Self::control_err("snapshot", e))?;
        std::fs::create_dir_all(dest)
            .and_then(|()| std::fs::write(dest.join(FAKE_STATE), "saved"))
            .map_err(|source| VmmError::Io {
                what: format!("writing {}", dest.display()),
                source,
            })
    }
    fn restore(&self, spec: &LaunchSpec, from: &Path) -> Result<RuntimeHandle, VmmError> {
        self.0.hit("vmm.restore").map_err(VmmError::Launch)?;
        if !from.join(FAKE_STATE).is_file() {
            return Err(VmmError::Launch(format!(
                "no saved state in {}",
                from.display()
            )));
        }
        let handle = self.spawn(spec);
        // The state loads after the VMM started: the daemon can die while
        // a VMM it has not recorded yet runs.
        if let Err(e) = self.0.hit("vmm.restore.load") {
            // As the real backends do: a VMM whose state did not load is
            // killed before the error returns.
            let _ = self.signal(&handle, libc::SIGKILL);
            return Err(VmmError::Launch(e));
        }
        Ok(handle)
    }
    fn unrecorded(&self, name: &str, control_socket: &Path) -> Vec<RuntimeHandle> {
        self.0
            .state()
            .procs
            .iter()
            .filter(|(_, p)| p.alive && p.name == name && p.control == control_socket)
            .map(|(pid, p)| RuntimeHandle {
                pid: *pid,
                start_time: p.start_time,
            })
            .collect()
    }
    fn agent_exec(
        &self,
        _control_socket: &Path,
        run: &AgentRun,
        _timeout: Duration,
    ) -> Result<AgentOutput, VmmError> {
        self.0
            .hit("vmm.agent_exec")
            .map_err(|e| Self::control_err("agent", e))?;
        self.0.state().agent_runs.push(run.clone());
        // A guest whose boot has finished.
        let stdout = match run.args.iter().any(|a| a == "is-system-running") {
            true => "running".to_string(),
            false => String::new(),
        };
        Ok(AgentOutput {
            code: 0,
            stdout,
            stderr: String::new(),
        })
    }
    fn is_alive(&self, handle: &RuntimeHandle, name: &str) -> bool {
        self.0
            .state()
            .procs
            .get(&handle.pid)
            .is_some_and(|p| p.alive && p.name == name && p.start_time == handle.start_time)
    }
    fn responds(&self, control_socket: &Path) -> bool {
        !self.0.state().wedged.contains(control_socket)
    }
    fn signal(&self, handle: &RuntimeHandle, _signal: i32) -> Result<(), VmmError> {
        self.0
            .hit("vmm.signal")
            .map_err(|e| Self::control_err("signal", e))?;
        if let Some(p) = self.0.state().procs.get_mut(&handle.pid) {
            p.alive = false;
        }
        Ok(())
    }
    fn request_shutdown(&self, control_socket: &Path) -> Result<(), VmmError> {
        self.0
            .hit("vmm.request_shutdown")
            .map_err(|e| Self::control_err("shutdown", e))?;
        for p in self.0.state().procs.values_mut() {
            if p.alive && p.control == control_socket {
                p.alive = false;
            }
        }
        Ok(())
    }
    fn attach_drive(&self, control: &Path, id: &str, _drive: &Drive) -> Result<(), VmmError> {
        self.0
            .hit("vmm.attach_drive")
            .map_err(|e| Self::control_err("attach", e))?;
        for p in self.0.state().procs.values_mut() {
            if p.alive && p.control == control {
                p.drives.insert(id.to_string());
            }
        }
        Ok(())
    }
    fn detach_drive(&self, control: &Path, id: &str) -> Result<(), VmmError> {
        self.0
            .hit("vmm.detach_drive")
            .map_err(|e| Self::control_err("detach", e))?;
        for p in self.0.state().procs.values_mut() {
            if p.control == control {
                p.drives.remove(id);
            }
        }
        Ok(())
    }
}
