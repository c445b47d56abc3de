//! The service registry: instances under leases, a revisioned change log and
//! watch streams.
//!
//! Writes go to a [`store::RegistryStore`] (in-memory or Redis). Every store
//! feeds one [`view::View`] per process: the current instances, the recent
//! history of changes and a broadcast of new ones. Reads and watches are served
//! from the view, so they keep working while a remote store is unreachable.

pub mod memory;
pub mod redis;
pub mod service;
pub mod store;
pub mod view;
pub mod watch;
