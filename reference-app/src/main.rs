//! `trestle-stream`: Trestle's reference app, a video streaming service assembled from the Trestle crates.
//!
//! **Status: not started.** A later issue brings upload, chunked parallel transcoding to HLS on the work queue,
//! an edge cache, catalog and search, auth, billing and metrics. Until then this binary only says so and exits
//! with status 2, so no script mistakes it for a running service.

fn main() {
    eprintln!(
        "trestle-stream: the reference app is not built yet (a later issue brings it).\n\
         Run a local Trestle cluster instead: scripts/run.sh"
    );
    std::process::exit(2);
}
