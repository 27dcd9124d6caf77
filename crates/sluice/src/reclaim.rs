//! Frees replaced route tables and config objects on a background thread,
//! off the reload path: dropping a 5,000-route table and its objects took
//! about a tenth of a full reload, spent between the config change and the
//! next one.

use std::sync::mpsc;

/// Hands values to the reclaim thread, which drops them. When the thread
/// cannot be started (or has gone), values are dropped in place.
pub(crate) struct Reclaim {
    tx: Option<mpsc::Sender<Box<dyn Send>>>,
}

// === impl Reclaim ===

impl Reclaim {
    /// Starts the thread.
    pub(crate) fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn Send>>();
        let spawned = std::thread::Builder::new().name("sluice-reclaim".into()).spawn(move || {
            while let Ok(v) = rx.recv() {
                drop(v);
            }
        });
        if let Err(e) = &spawned {
            tracing::warn!(error = %e, "Cannot start the reclaim thread; replaced tables are freed on the reload path");
        }
        Self { tx: spawned.ok().map(|_| tx) }
    }

    /// Drops `value` on the reclaim thread.
    pub(crate) fn drop_later<T: Send + 'static>(&self, value: T) {
        if let Some(tx) = &self.tx {
            // A send only fails when the thread is gone; the value then
            // comes back in the error and drops here.
            let _ = tx.send(Box::new(value));
        }
    }
}
