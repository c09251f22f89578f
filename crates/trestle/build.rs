//! Generates the server side of etcd's lock and election services (`proto/`). Their shared messages
//! (`ResponseHeader`, `KeyValue`) come from the etcd-client crate, so values pass between the two untouched.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".etcdserverpb.ResponseHeader",
            "::etcd_client::proto::PbResponseHeader",
        )
        .extern_path(".mvccpb.KeyValue", "::etcd_client::proto::PbKeyValue")
        .compile_protos(&["proto/v3lock.proto", "proto/v3election.proto"], &["proto"])?;
    Ok(())
}
