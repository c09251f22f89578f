//! `trestle snapshot restore`: seeds a new member's data directory from a backup (what `etcdctl snapshot save`
//! wrote from a Trestle member), in the spirit of `etcdutl snapshot restore`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::serve::ServeArgs;

/// What `trestle snapshot` does.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum SnapshotCommand {
    /// Seed a new member's data directory from a backup. Run it for every member of the new cluster, with the
    /// same backup and the same --initial-cluster, then start each with `trestle serve` and the same flags.
    Restore(RestoreArgs),
}

/// `trestle snapshot restore FILE` and the member's flags, as `trestle serve` takes them.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup (`etcdctl snapshot save FILE` against a Trestle member).
    pub file: PathBuf,
    /// The new member: --name, --data-dir (must not hold data yet), --initial-cluster,
    /// --initial-advertise-peer-urls, ...
    #[command(flatten)]
    pub member: Box<ServeArgs>,
}

/// Runs `trestle snapshot restore`.
pub(crate) async fn restore(args: RestoreArgs) -> Result<(), String> {
    let backup = std::fs::read(&args.file).map_err(|e| format!("reading {}: {e}", args.file.display()))?;
    let store = trestle_etcd::decode_backup(&backup).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let config = args.member.into_config().map_err(|e| e.to_string())?;
    trestle_etcd::restore_backup(&backup, &config.node)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "restored revision {} ({} keys) into {}; start this member with `trestle serve` and the same flags",
        store.revision(),
        store.live_key_count(),
        config.node.data_dir.display()
    );
    Ok(())
}
