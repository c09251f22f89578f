//! Generates the peer (Raft) gRPC service from `proto/raft.proto`. etcd's client-facing services come from the
//! `etcd-client` crate, generated from etcd's own protos.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raft.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/raft.proto"], &["proto"])?;
    Ok(())
}
