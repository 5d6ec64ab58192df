//! Compiles `proto/docket/v1/*.proto` with the vendored `protoc`; nothing else.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/docket/v1/event.proto",
        "proto/docket/v1/governance.proto",
        "proto/docket/v1/ledger.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Refuses undecodable messages as INVALID_ARGUMENT (src/api/codec.rs).
        .codec_path("crate::api::codec::Codec")
        .file_descriptor_set_path(out.join("docket_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
