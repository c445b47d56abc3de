//! Compiles `proto/` into Rust with tonic-prost-build and writes a file
//! descriptor set for gRPC server reflection. protoc comes from
//! protoc-bin-vendored unless `$PROTOC` names one.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/redfire/registry/v1/registry.proto",
    "proto/redfire/identity/v1/identity.proto",
    "proto/redfire/events/v1/events.proto",
];

fn main() -> anyhow::Result<()> {
    let mut config = tonic_prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("redfire_descriptor.bin")).compile_with_config(
        config,
        PROTOS,
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
