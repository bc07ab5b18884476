//! Compiles the protos in `proto/` with protox (pure Rust, so no protoc binary is
//! needed on a build machine) and writes a file descriptor set for reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "identity/identity.proto",
    "replication/replication.proto",
    "volumegroup/volumegroup.proto",
    "fence/fence.proto",
    "reclaimspace/reclaimspace.proto",
    "github.com/container-storage-interface/spec/lib/go/csi/csi.proto",
    "volumegroupsnapshot/volumegroupsnapshot.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, ["proto"])?;
    let fds_bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out_dir.join("file_descriptor_set.bin"), fds_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, with undecodable requests answered INVALID_ARGUMENT.
        .codec_path("crate::server::codec::RequestCodec")
        .include_file("protos.rs")
        .compile_fds(fds)?;
    Ok(())
}
