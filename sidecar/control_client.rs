//! The sidecar's client of control: everything it asks control for, over
//! long-lived streams that survive control restarts.
//! - [`identity`] — the workload certificate: a CSR signed by control's CA
//!   (bootstrap token first, then the current certificate), renewed at 70 %;
//! - [`registration`] — this instance's lease in the registry, with the app's
//!   health on its KeepAlive stream;
//! - [`discovery`] — the endpoints of the services this sidecar calls, from
//!   the registry's Watch, kept while control is unreachable.
//!
//! The other Watches live beside what they feed: the policy Watch in
//! `crate::sidecar::policy`, the hub's event streams in
//! `crate::sidecar::gateway::hub::bus`.

pub mod discovery;
pub mod identity;
pub mod registration;
