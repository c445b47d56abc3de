//! RedFire Mesh: a gRPC-first service mesh, in three layers whose imports go
//! one way (checked by `tests/layering.rs`):
//!
//! - [`mesh`] — the shared language, owned by neither half: the policy
//!   language (policy documents, routes, rate-limit rules, with their
//!   validation), the registry and events wire models, workload identity
//!   names, and what every process shares (settings parsing, telemetry, the
//!   drain primitive, the admin HTTP loop).
//! - [`control`] — the control service (`redfire-control`): service registry
//!   with leases and watch streams over an in-memory or Redis store, the mesh
//!   CA, the event bus and policy distribution. Imports `mesh`, never `sidecar`.
//! - [`sidecar`] — the data plane (`redfire-sidecar`): outbound and inbound
//!   proxy with mTLS, balancing, retries, breakers, policy and rate limits,
//!   and gateway mode at the edge. Imports `mesh`, never `control`.
//! - [`proto`] — the generated gRPC API (`proto/`), kept at the edge: both
//!   halves convert it into `mesh` types at their API boundary.

pub mod control;
pub mod mesh;
pub mod sidecar;

/// Settings for property tests: `cases` random cases, and no regression
/// files (proptest would write them beside the crate root, outside the
/// tree); a failure prints its minimal input instead.
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config { failure_persistence: None, ..proptest::test_runner::Config::with_cases(cases) }
}

/// Generated protobuf and gRPC code, one module per versioned package.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `redfire.events.v1`
    pub mod events {
        /// `redfire.events.v1`
        pub mod v1 {
            tonic::include_proto!("redfire.events.v1");
        }
    }

    /// `redfire.identity.v1`
    pub mod identity {
        /// `redfire.identity.v1`
        pub mod v1 {
            tonic::include_proto!("redfire.identity.v1");
        }
    }

    /// `redfire.policy.v1`
    pub mod policy {
        /// `redfire.policy.v1`
        pub mod v1 {
            tonic::include_proto!("redfire.policy.v1");
        }
    }

    /// `redfire.registry.v1`
    pub mod registry {
        /// `redfire.registry.v1`
        pub mod v1 {
            tonic::include_proto!("redfire.registry.v1");
        }
    }

    /// Every compiled `.proto` as a `FileDescriptorSet`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("redfire_descriptor");
}
