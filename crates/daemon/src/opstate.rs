//! Operations: every mutating request gets an id, a kind, a VM, a phase and
//! a progress figure, persisted in the store. Two mutating operations on one
//! VM never interleave: the second is refused at once with a `busy` error
//! naming the operation that holds the VM (clients may retry; nothing
//! queues behind a stuck operation), except `vm kill` and `vm delete -f`,
//! which cancel the holder and take the VM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{ApiError, ErrorCode, Event, OpInfo, OpState, Progress};
use tokio::sync::mpsc::Sender;
use tokio::sync::watch;

use crate::store::{now, Store};

/// Where events go (the client's connection); may be closed. Bounded: a
/// large answer streams no faster than the client reads it, and a
/// progress event that finds it full is dropped (the next one says more).
pub type Sink = Sender<Event>;

/// How many events wait for a slow client.
pub const SINK_DEPTH: usize = 32;

/// The size of one chunk of a streamed answer.
pub const CHUNK: usize = 64 << 10;

/// Hands out operations and holds the per-VM exclusion.
#[derive(Debug)]
pub struct OpTracker {
    store: Arc<Store>,
    /// VM name -> the operation holding it.
    held: Mutex<HashMap<String, Holder>>,
}

/// The operation holding a VM, and how to cancel it.
#[derive(Debug, Clone)]
struct Holder {
    id: String,
    kind: String,
    cancel: Arc<watch::Sender<Option<String>>>,
}

/// How long `vm kill` and `vm delete -f` wait for a preempted operation to
/// let go of the VM.
const PREEMPT_WAIT: Duration = Duration::from_secs(30);

impl OpTracker {
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an operation of `kind` on `vms` (all or nothing). Fails with
    /// `busy` if another operation holds any of them.
    pub fn begin(
        self: &Arc<Self>,
        kind: &str,
        vms: &[&str],
        sink: Option<Sink>,
    ) -> Result<Op, ApiError> {
        let id = new_id();
        let (tx, rx) = watch::channel(None);
        let holder = Holder {
            id: id.clone(),
            kind: kind.to_string(),
            cancel: Arc::new(tx),
        };
        {
            let mut held = self.held();
            if let Some((vm, other)) = vms.iter().find_map(|v| held.get(*v).map(|h| (v, h))) {
                return Err(ApiError::new(
                    ErrorCode::Busy,
                    format!(
                        "VM {vm:?} is busy with operation {} ({}); wait for it to finish and try again, or `banger vm kill {vm}`",
                        other.id, other.kind
                    ),
                ));
            }
            for v in vms {
                held.insert(v.to_string(), holder.clone());
            }
        }
        let held = vms.iter().map(|v| v.to_string()).collect();
        self.record(id, kind, vms.first().copied(), held, rx, sink)
    }

    /// Persists a new operation; dropping it lets go of `held`.
    fn record(
        self: &Arc<Self>,
        id: String,
        kind: &str,
        vm: Option<&str>,
        held: Vec<String>,
        cancel: watch::Receiver<Option<String>>,
        sink: Option<Sink>,
    ) -> Result<Op, ApiError> {
        let info = OpInfo {
            id: id.clone(),
            kind: kind.to_string(),
            vm: vm.map(str::to_string),
            state: OpState::Running,
            phase: "start".into(),
            progress: 0,
            started_at: now(),
            ended_at: None,
            error: None,
        };
        let op = Op {
            id,
            vms: held,
            tracker: self.clone(),
            sink,
            cancel,
        };
        // On failure, dropping `op` lets go of what it holds.
        self.store
            .insert_op(&info)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        tracing::info!(op = %op.id, kind, vm = ?info.vm, "operation started");
        Ok(op)
    }

    /// An operation of `kind` on `vm` that holds nothing: it is recorded
    /// (and listed with the VM) but never busy, nor makes others busy.
    pub fn begin_shared(
        self: &Arc<Self>,
        kind: &str,
        vm: &str,
        sink: Option<Sink>,
    ) -> Result<Op, ApiError> {
        // Never cancelled: its sender is dropped at once.
        let (_, rx) = watch::channel(None);
        self.record(new_id(), kind, Some(vm), Vec::new(), rx, sink)
    }

    /// Like [`OpTracker::begin`] on one VM, but an operation holding it is
    /// cancelled (its future dropped, its child processes killed) and this
    /// one waits for the VM to be let go: `vm kill` and `vm delete -f`
    /// always win.
    pub async fn begin_preempting(
        self: &Arc<Self>,
        kind: &str,
        vm: &str,
        sink: Option<Sink>,
    ) -> Result<Op, ApiError> {
        let deadline = tokio::time::Instant::now() + PREEMPT_WAIT;
        loop {
            match self.begin(kind, &[vm], sink.clone()) {
                Err(e) if e.code == ErrorCode::Busy => {}
                other => return other,
            }
            if let Some(holder) = self.held().get(vm).cloned() {
                let reason = format!("cancelled by {kind}");
                if holder.cancel.send_if_modified(|c| {
                    let first = c.is_none();
                    if first {
                        *c = Some(reason.clone());
                    }
                    first
                }) {
                    tracing::warn!(op = %holder.id, vm, "{reason}");
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::Busy,
                    format!(
                        "the operation holding VM {vm:?} did not let go within {}s; try again",
                        PREEMPT_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether an operation holds `vm` now.
    pub fn is_held(&self, vm: &str) -> bool {
        self.held().contains_key(vm)
    }

    fn release(&self, id: &str, vms: &[String]) {
        let mut held = self.held();
        for v in vms {
            if held.get(v).is_some_and(|h| h.id == id) {
                held.remove(v);
            }
        }
    }
}

/// A running operation. Dropping it releases its VMs.
#[derive(Debug)]
pub struct Op {
    pub id: String,
    vms: Vec<String>,
    tracker: Arc<OpTracker>,
    sink: Option<Sink>,
    cancel: watch::Receiver<Option<String>>,
}

impl Op {
    /// Records a new phase and tells the client.
    pub fn phase(&self, phase: &str, message: &str, percent: u8) {
        tracing::info!(op = %self.id, phase, "{message}");
        if let Err(e) = self.tracker.store.update_op_phase(&self.id, phase, percent) {
            tracing::warn!(op = %self.id, "recording phase: {e}");
        }
        if let Some(sink) = &self.sink {
            let _ = sink.try_send(Event::Progress(Progress {
                phase: phase.to_string(),
                message: message.to_string(),
                percent,
            }));
        }
    }

    /// Streams `bytes` to the client as the next chunk of the answer,
    /// waiting while the client is behind. False when the client is gone
    /// (with no client at all, the bytes go nowhere).
    pub async fn data(&self, bytes: &[u8]) -> bool {
        use base64::Engine;
        let Some(sink) = &self.sink else {
            return true; // nobody asked to see it
        };
        let chunk = base64::engine::general_purpose::STANDARD.encode(bytes);
        sink.send(Event::Data(chunk)).await.is_ok()
    }

    /// A reporter for blocking code (image builds).
    pub fn reporter(&self) -> impl Fn(&str, u8) + Send + Sync + 'static {
        let sink = self.sink.clone();
        let store = self.tracker.store.clone();
        let id = self.id.clone();
        move |msg: &str, pct: u8| {
            let phase = msg.split(':').next().unwrap_or(msg).to_string();
            let _ = store.update_op_phase(&id, &phase, pct);
            if let Some(s) = &sink {
                let _ = s.try_send(Event::Progress(Progress {
                    phase,
                    message: msg.to_string(),
                    percent: pct,
                }));
            }
        }
    }

    /// Resolves, with the reason, once another operation cancels this one.
    pub async fn cancelled(&self) -> String {
        let mut rx = self.cancel.clone();
        let reason: Option<String> = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| (*r).clone());
        match reason {
            Some(reason) => reason,
            // The sender went away: never cancelled.
            None => std::future::pending().await,
        }
    }

    fn cancel_reason(&self) -> Option<String> {
        self.cancel.borrow().clone()
    }

    /// Records the outcome; the VMs are released when the operation drops.
    pub fn finish<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        let message = result.as_ref().err().map(|e| e.to_string());
        let state = match (&message, self.cancel_reason()) {
            (None, _) => OpState::Succeeded,
            (Some(_), Some(_)) => OpState::Cancelled,
            (Some(_), None) => OpState::Failed,
        };
        match &message {
            None => tracing::info!(op = %self.id, "operation succeeded"),
            Some(e) => tracing::warn!(op = %self.id, ?state, "operation ended: {e}"),
        }
        if let Err(e) = self
            .tracker
            .store
            .finish_op(&self.id, state, message.as_deref())
        {
            tracing::warn!(op = %self.id, "recording result: {e}");
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.tracker.release(&self.id, &self.vms);
    }
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("op-{:x}{:04x}", nanos & 0xffff_ffff_ffff, seq & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (Arc<Store>, Arc<OpTracker>) {
        let store = Arc::new(Store::open_in_memory().unwrap());
        (store.clone(), OpTracker::new(store))
    }

    #[test]
    fn a_second_operation_on_the_same_vm_is_busy_until_the_first_ends() {
        let (_, t) = tracker();
        let op = t.begin("vm_stop", &["dev"], None).unwrap();
        let err = t.begin("vm_start", &["dev"], None).unwrap_err();
        assert_eq!(err.code, ErrorCode::Busy);
        assert!(err.message.contains(&op.id), "{}", err.message);
        assert!(t.begin("vm_start", &["other"], None).is_ok());
        op.finish::<(), ApiError>(&Ok(()));
        drop(op);
        assert!(!t.is_held("dev"));
        assert!(t.begin("vm_start", &["dev"], None).is_ok());
    }

    #[tokio::test]
    async fn a_preempting_operation_cancels_the_holder_and_takes_the_vm() {
        let (store, t) = tracker();
        let stuck = t.begin("workspace_export", &["dev"], None).unwrap();
        let stuck_id = stuck.id.clone();
        let holder = tokio::spawn(async move {
            let reason = stuck.cancelled().await;
            stuck.finish::<(), String>(&Err(reason.clone()));
            reason
        });
        let kill = t.begin_preempting("vm_kill", "dev", None).await.unwrap();
        assert_eq!(holder.await.unwrap(), "cancelled by vm_kill");
        let ops = store.list_ops(5).unwrap();
        let cancelled = ops.iter().find(|o| o.id == stuck_id).unwrap();
        assert_eq!(cancelled.state, OpState::Cancelled);
        assert!(t.is_held("dev"));
        drop(kill);
        assert!(!t.is_held("dev"));
    }

    #[test]
    fn a_shared_operation_is_listed_with_its_vm_and_holds_nothing() {
        let (store, t) = tracker();
        let cp = t.begin_shared("vm_cp_in", "dev", None).unwrap();
        assert!(!t.is_held("dev"));
        let stop = t.begin("vm_stop", &["dev"], None).unwrap();
        let cp2 = t.begin_shared("vm_cp_out", "dev", None).unwrap();
        drop(stop);
        assert_eq!(store.list_ops(5).unwrap()[0].vm.as_deref(), Some("dev"));
        drop((cp, cp2));
    }

    #[test]
    fn multi_vm_operations_take_all_or_nothing() {
        let (_, t) = tracker();
        let _a = t.begin("vm_stop", &["a"], None).unwrap();
        assert!(t.begin("vm_prune", &["b", "a"], None).is_err());
        assert!(!t.is_held("b"), "a refused operation must hold nothing");
    }

    #[test]
    fn phases_and_results_are_persisted_and_streamed() {
        let (store, t) = tracker();
        let (tx, mut rx) = tokio::sync::mpsc::channel(SINK_DEPTH);
        let op = t.begin("vm_create", &["dev"], Some(tx)).unwrap();
        let id = op.id.clone();
        op.phase("boot", "booting", 40);
        let ops = store.list_ops(5).unwrap();
        assert_eq!((ops[0].phase.as_str(), ops[0].progress), ("boot", 40));
        assert!(matches!(rx.try_recv(), Ok(Event::Progress(p)) if p.phase == "boot"));
        op.finish::<(), ApiError>(&Err(ApiError::internal("disk full")));
        let ops = store.list_ops(5).unwrap();
        assert_eq!(ops[0].id, id);
        assert_eq!(ops[0].state, OpState::Failed);
        assert_eq!(ops[0].error.as_deref(), Some("disk full"));
        assert!(ops[0].ended_at.is_some());
    }
}
