//! Generates the cache node's gRPC service and client (`proto/cache.proto`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/cache.proto"], &["proto"])?;
    Ok(())
}
