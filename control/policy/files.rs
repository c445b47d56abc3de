//! The policy directory: every `<service>.toml` in it is that service's
//! policy. Loaded once at start (any invalid file stops the start: there is
//! no last good policy to keep), then polled: a changed file is parsed and,
//! when valid, stored (proxies get it through Watch); when invalid, the
//! error is logged, counted and shown on `/admin/policy`, and the last good
//! policy stays in force. A removed file removes that service's policy.
//!
//! A change is loaded once the file's modification time and size are the
//! same on two polls in a row, so a file caught half-written by an editor is
//! not loaded (writing a temporary file and renaming it is still best). An
//! empty file is an error, never an empty (allow-all) policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::store::PolicyStore;
use crate::mesh::policy::{PolicyError, parse_toml};

/// What a file looked like when it was last read.
type Stamp = (SystemTime, u64);

/// Watches one directory.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    store: Arc<PolicyStore>,
    seen: BTreeMap<PathBuf, Stamp>,
    /// Changed files seen once, waiting to be seen unchanged again.
    pending: BTreeMap<PathBuf, Option<Stamp>>,
    errors: Arc<prometheus_client::metrics::counter::Counter>,
}

/// The service a policy file is for: its name without `.toml`.
fn service_of(path: &Path) -> Option<String> {
    (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(String::from)).flatten()
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl PolicyDir {
    /// Loads every file of `dir`; the first invalid one is the error.
    pub async fn load(
        dir: PathBuf,
        store: Arc<PolicyStore>,
        errors: Arc<prometheus_client::metrics::counter::Counter>,
    ) -> Result<PolicyDir, PolicyError> {
        let mut d = PolicyDir { dir, store, seen: BTreeMap::new(), pending: BTreeMap::new(), errors };
        for (path, service) in d.list().map_err(|message| PolicyError {
            origin: d.dir.display().to_string(),
            line: None,
            field: None,
            message,
        })? {
            d.apply(&path, &service).await?;
        }
        Ok(d)
    }

    fn list(&self) -> Result<Vec<(PathBuf, String)>, String> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| format!("policy_dir: {e}"))?;
        let mut out: Vec<_> =
            entries.flatten().map(|e| e.path()).filter_map(|p| service_of(&p).map(|s| (p, s))).collect();
        out.sort();
        Ok(out)
    }

    /// Reads, validates and stores one file.
    async fn apply(&mut self, path: &Path, service: &str) -> Result<(), PolicyError> {
        let origin = path.display().to_string();
        let st = stamp(path);
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            line: None,
            field: None,
            message: e.to_string(),
        })?;
        if let Some(st) = st {
            self.seen.insert(path.to_path_buf(), st);
        }
        if text.trim().is_empty() {
            return Err(PolicyError {
                origin,
                line: None,
                field: None,
                message: "empty policy file (to remove a policy, remove its file)".into(),
            });
        }
        let doc = parse_toml(&text, &origin, service)?;
        let json = serde_json::to_string(&doc).map_err(|e| PolicyError {
            origin: origin.clone(),
            line: None,
            field: None,
            message: e.to_string(),
        })?;
        let snap = self.store.set(service, &json, &format!("file:{origin}")).await.map_err(|e| PolicyError {
            origin: origin.clone(),
            line: None,
            field: None,
            message: e.to_string(),
        })?;
        self.store.set_error(&origin, None);
        tracing::info!(file = %origin, service, version = snap.version, "policy loaded");
        Ok(())
    }

    /// Checks the directory every `interval` until the task is dropped.
    pub async fn watch(mut self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.poll().await;
        }
    }

    /// One pass: new or changed files are loaded, removed ones unloaded.
    pub async fn poll(&mut self) {
        let files = match self.list() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the policy directory; policies stay as they are");
                return;
            }
        };
        for (path, service) in &files {
            let now = stamp(path);
            if self.seen.get(path).copied() == now {
                self.pending.remove(path);
                continue;
            }
            if self.pending.insert(path.clone(), now) != Some(now) {
                continue; // changed since the last poll: may still be being written
            }
            self.pending.remove(path);
            if let Err(e) = self.apply(path, service).await {
                self.errors.inc();
                tracing::error!(error = %e, "invalid policy rejected; the last good one stays in force");
                self.store.set_error(&path.display().to_string(), Some(e.to_string()));
            }
        }
        let gone: Vec<PathBuf> = self.seen.keys().filter(|p| !files.iter().any(|(f, _)| f == *p)).cloned().collect();
        self.pending.retain(|p, _| files.iter().any(|(f, _)| f == p));
        for path in gone {
            self.seen.remove(&path);
            self.store.set_error(&path.display().to_string(), None);
            if let Some(service) = service_of(&path) {
                match self.store.delete(&service).await {
                    Ok(_) => tracing::info!(file = %path.display(), service, "policy file removed; policy unloaded"),
                    Err(e) => tracing::warn!(error = %e, "cannot unload a removed policy; retrying"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_loads_once_settled_and_an_empty_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("redfire-policy-files-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("orders.toml");
        std::fs::write(&file, "[authz]\ndefault = \"deny\"\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
        let store = PolicyStore::memory();
        let errors = Arc::new(prometheus_client::metrics::counter::Counter::default());
        let mut d = PolicyDir::load(dir.clone(), store.clone(), errors.clone()).await.unwrap();
        assert_eq!(store.get("orders").unwrap().version, 1);
        assert_eq!(store.all().len(), 1, "only *.toml files");

        std::fs::write(&file, "[authz]\ndefault = \"allow\"\n").unwrap();
        d.poll().await;
        assert_eq!(store.get("orders").unwrap().version, 1, "not yet: the file may still be being written");
        d.poll().await;
        assert_eq!(store.get("orders").unwrap().version, 2, "unchanged for a poll: loaded");

        std::fs::write(&file, "").unwrap();
        d.poll().await;
        d.poll().await;
        assert_eq!(store.get("orders").unwrap().version, 2, "the last good policy stays");
        assert!(store.errors().values().any(|e| e.contains("empty policy file")), "{:?}", store.errors());
        assert_eq!(errors.get(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
