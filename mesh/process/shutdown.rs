//! The one drain primitive: a flag every long-lived task watches. Flipping it
//! marks the process draining (health NOT_SERVING, `/ready` 503), ends watch
//! and keep-alive streams so clients move to another replica, and stops the
//! gRPC server accepting; in-flight unary calls finish within the grace period.

use tokio::sync::watch;

/// The sending side; cloneable receivers go to every task.
#[derive(Debug, Clone)]
pub struct Drain(watch::Sender<bool>);

impl Default for Drain {
    fn default() -> Self {
        Drain(watch::channel(false).0)
    }
}

impl Drain {
    /// Starts draining. Idempotent.
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    /// A receiver that turns `true` when draining starts.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when draining starts.
    pub async fn started(&self) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
