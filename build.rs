//! Compiles `proto/` into Rust with tonic-prost-build and writes a file
//! descriptor set for gRPC server reflection. protoc comes from
//! protoc-bin-vendored unless `$PROTOC` names one.
//!
//! The example service (`redfire.example.v1`, with `google.api.http`
//! bindings) is compiled apart, into its own descriptor set
//! (`example_descriptor.bin`, imports included): the gateway transcoding
//! tests serve it and hand that set to the gateway. It stays out of the
//! mesh's own set, which control serves by reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/redfire/registry/v1/registry.proto",
    "proto/redfire/identity/v1/identity.proto",
    "proto/redfire/events/v1/events.proto",
    "proto/redfire/policy/v1/policy.proto",
];

const EXAMPLE_PROTOS: &[&str] = &["proto/redfire/example/v1/users.proto"];

fn config() -> anyhow::Result<tonic_prost_build::Config> {
    let mut config = tonic_prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("redfire_descriptor.bin")).compile_with_config(
        config()?,
        PROTOS,
        &["proto"],
    )?;
    tonic_prost_build::configure().file_descriptor_set_path(out.join("example_descriptor.bin")).compile_with_config(
        config()?,
        EXAMPLE_PROTOS,
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
