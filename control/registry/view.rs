//! The process-local view of the registry: current instances, the recent
//! history of changes and a broadcast of each new change.
//!
//! Every store feeds exactly one view. The in-memory store applies its writes
//! here directly; the Redis store applies the entries it reads from the shared
//! change feed, so all replicas apply the same changes in the same order.
//! Watchers subscribe here, which is why a replica keeps serving watches and
//! reads while Redis is unreachable.
//!
//! The lock is a plain `std::sync::RwLock`: it is never held across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{broadcast, watch};

use crate::mesh::registry::Instance;

/// How many broadcast messages a watcher may fall behind before it resyncs
/// from the history (or gets a reset snapshot).
const BROADCAST_CAPACITY: usize = 4096;

/// What happened to the registry at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Added or changed: the full new state.
    Put(Instance),
    /// Removed: the last state and why.
    Delete(Instance, DeleteReason),
}

/// Why an instance was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its owner called Deregister.
    Deregistered,
    /// Its lease was not renewed in time.
    LeaseExpired,
}

impl DeleteReason {
    /// The wire form, also used in the Redis change feed.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Deregistered => "deregistered",
            DeleteReason::LeaseExpired => "lease expired",
        }
    }

    /// Parses [`DeleteReason::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deregistered" => Some(DeleteReason::Deregistered),
            "lease expired" => Some(DeleteReason::LeaseExpired),
            _ => None,
        }
    }
}

impl Change {
    /// The instance the change is about.
    pub fn instance(&self) -> &Instance {
        match self {
            Change::Put(i) | Change::Delete(i, _) => i,
        }
    }
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The revision this change produced.
    pub revision: u64,
    /// The change.
    pub change: Change,
}

/// What a watcher is sent on its broadcast channel.
#[derive(Clone, Debug)]
pub enum Broadcast {
    /// The next change, in order.
    Change(Arc<Event>),
    /// The whole view was replaced (the store's history could not be
    /// followed): watchers send a reset snapshot.
    Reset,
}

/// The view's state at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Store incarnation.
    pub epoch: String,
    /// Revision the snapshot is at.
    pub revision: u64,
    /// Instances, ordered by key.
    pub instances: Vec<Instance>,
}

/// How a watcher starts.
#[derive(Debug)]
pub enum Start {
    /// The changes after the client's revision, from the history.
    Resume(Vec<Arc<Event>>),
    /// A full snapshot; `reset` when it replaces what the client had.
    Snapshot(Snapshot, bool),
}

#[derive(Debug)]
struct State {
    epoch: String,
    revision: u64,
    instances: BTreeMap<String, Instance>,
    /// Lease → the service of the instance living under it.
    leases: HashMap<u64, String>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct View {
    state: RwLock<State>,
    tx: broadcast::Sender<Broadcast>,
    revision_tx: watch::Sender<(String, u64)>,
}

impl View {
    /// An empty view at revision 0 of `epoch`, keeping `history_cap` changes.
    pub fn new(epoch: String, history_cap: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (revision_tx, _) = watch::channel((epoch.clone(), 0));
        Arc::new(View {
            state: RwLock::new(State {
                epoch,
                revision: 0,
                instances: BTreeMap::new(),
                leases: HashMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
            }),
            tx,
            revision_tx,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written
        // (every mutation is a few infallible map operations), so poisoning
        // carries no information here.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Current epoch and revision.
    pub fn position(&self) -> (String, u64) {
        let s = self.read();
        (s.epoch.clone(), s.revision)
    }

    /// Applies the change that produced `revision`, which must be the next
    /// one; returns false (and changes nothing) otherwise.
    pub fn apply(&self, revision: u64, change: Change) -> bool {
        let mut s = self.write();
        if revision != s.revision + 1 {
            return false;
        }
        let key = change.instance().key();
        match &change {
            Change::Put(i) => {
                if let Some(old) = s.instances.insert(key, i.clone()) {
                    s.leases.remove(&old.lease_id);
                }
                s.leases.insert(i.lease_id, i.service.clone());
            }
            Change::Delete(..) => {
                if let Some(old) = s.instances.remove(&key) {
                    s.leases.remove(&old.lease_id);
                }
            }
        }
        s.revision = revision;
        let event = Arc::new(Event { revision, change });
        if s.history.len() == s.history_cap {
            s.history.pop_front();
        }
        s.history.push_back(event.clone());
        // Sent under the write lock so that a subscriber, which subscribes
        // under the read lock, sees every change after its starting point
        // exactly once.
        let _ = self.tx.send(Broadcast::Change(event));
        let epoch = s.epoch.clone();
        drop(s);
        self.revision_tx.send_replace((epoch, revision));
        true
    }

    /// Replaces everything (a store snapshot); watchers send reset snapshots.
    pub fn reset(&self, epoch: String, revision: u64, instances: Vec<Instance>) {
        let mut s = self.write();
        s.epoch = epoch.clone();
        s.revision = revision;
        s.leases = instances.iter().map(|i| (i.lease_id, i.service.clone())).collect();
        s.instances = instances.into_iter().map(|i| (i.key(), i)).collect();
        s.history.clear();
        let _ = self.tx.send(Broadcast::Reset);
        drop(s);
        self.revision_tx.send_replace((epoch, revision));
    }

    /// One instance by key.
    pub fn get(&self, key: &str) -> Option<Instance> {
        self.read().instances.get(key).cloned()
    }

    /// The service of the instance living under `lease`.
    pub fn lease_service(&self, lease: u64) -> Option<String> {
        self.read().leases.get(&lease).cloned()
    }

    /// The instances of one service, ordered by instance id.
    pub fn service(&self, service: &str) -> (u64, Vec<Instance>) {
        let s = self.read();
        let prefix = format!("{service}/");
        let list = s.instances.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix));
        (s.revision, list.map(|(_, i)| i.clone()).collect())
    }

    /// Everything, as one consistent snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.read();
        Snapshot { epoch: s.epoch.clone(), revision: s.revision, instances: s.instances.values().cloned().collect() }
    }

    /// Accepts every service, for [`View::subscribe`].
    pub fn all(_service: &str) -> bool {
        true
    }

    /// How many instances are registered.
    pub fn len(&self) -> usize {
        self.read().instances.len()
    }

    /// True when no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a watcher at the client's resume point (`None` for a fresh
    /// watch). The receiver yields every change after the returned start, with
    /// no gap and no duplicate, because both are taken under one lock. A
    /// snapshot holds only the services `wanted` accepts (copying the whole
    /// registry for a watcher of one service would make a reconnect storm
    /// cost registry size × watchers).
    pub fn subscribe(
        &self,
        resume: Option<(&str, u64)>,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<(Start, broadcast::Receiver<Broadcast>), String> {
        let s = self.read();
        let rx = self.tx.subscribe();
        let snapshot = |s: &State| Snapshot {
            epoch: s.epoch.clone(),
            revision: s.revision,
            instances: s.instances.values().filter(|i| wanted(&i.service)).cloned().collect(),
        };
        let start = match resume {
            None => Start::Snapshot(snapshot(&s), false),
            Some((epoch, _)) if epoch != s.epoch => Start::Snapshot(snapshot(&s), true),
            Some((_, rev)) if rev > s.revision => {
                return Err(format!(
                    "revision: {rev} is ahead of the registry (epoch {}, revision {})",
                    s.epoch, s.revision
                ));
            }
            Some((_, rev)) if rev == s.revision => Start::Resume(Vec::new()),
            Some((_, rev)) => match s.history.front() {
                Some(first) if first.revision <= rev + 1 => {
                    let skip = (rev + 1 - first.revision) as usize;
                    Start::Resume(s.history.iter().skip(skip).cloned().collect())
                }
                _ => Start::Snapshot(snapshot(&s), true),
            },
        };
        Ok((start, rx))
    }

    /// Waits until the view has reached `revision` of `epoch` (or moved to
    /// another epoch), for read-your-writes after a store write.
    pub async fn wait_for(&self, epoch: &str, revision: u64) {
        let mut rx = self.revision_tx.subscribe();
        let _ = rx.wait_for(|(e, r)| e != epoch || *r >= revision).await;
    }

    /// Number of active broadcast subscribers (watchers).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// A fresh random epoch: 16 lowercase hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// True for strings [`new_epoch`] could have made.
pub fn is_epoch(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::registry::test_instance as inst;

    #[test]
    fn resume_returns_exactly_the_missed_changes() {
        let v = View::new("e".into(), 3);
        for (r, id) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            assert!(v.apply(r, Change::Put(inst(id))));
        }
        assert!(!v.apply(6, Change::Put(inst("x"))), "a gap is refused");
        let (start, _) = v.subscribe(Some(("e", 2)), &View::all).unwrap();
        match start {
            Start::Resume(ev) => assert_eq!(ev.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![3, 4]),
            other => panic!("{other:?}"),
        }
        // Revision 1's successor is gone from a 3-entry history: reset.
        assert!(matches!(v.subscribe(Some(("e", 0)), &View::all).unwrap().0, Start::Snapshot(_, true)));
        assert!(matches!(v.subscribe(Some(("other", 4)), &View::all).unwrap().0, Start::Snapshot(_, true)));
        assert!(matches!(v.subscribe(Some(("e", 4)), &View::all).unwrap().0, Start::Resume(ref e) if e.is_empty()));
        assert!(v.subscribe(Some(("e", 5)), &View::all).unwrap_err().contains("ahead"));
    }

    #[test]
    fn service_lists_only_that_service() {
        let v = View::new("e".into(), 10);
        let mut other = inst("z");
        other.service = "svc-b".into();
        v.apply(1, Change::Put(inst("a")));
        v.apply(2, Change::Put(other));
        v.apply(3, Change::Delete(inst("a"), DeleteReason::Deregistered));
        v.apply(4, Change::Put(inst("b")));
        let (rev, list) = v.service("svc");
        assert_eq!(rev, 4);
        assert_eq!(list.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), vec!["b"]);
    }
}
