//! Compiles `proto/docket/v1/*.proto` with the vendored `protoc`: messages
//! and servers, then the clients apart (each with its own codec); nothing else.

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
    // Messages and servers: the servers decode requests with
    // api::codec::Codec, which refuses undecodable bytes as INVALID_ARGUMENT.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::api::codec::Codec")
        .file_descriptor_set_path(out.join("docket_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    // Clients, apart and with prost's own codec: a reply a client cannot
    // decode is not the request's fault (tonic reports it as INTERNAL).
    let clients = out.join("clients");
    std::fs::create_dir_all(&clients)?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&clients)
        .extern_path(".docket.v1", "crate::api::pb")
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
