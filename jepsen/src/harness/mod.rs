//! Running a test against real `trestle` processes: the cluster (processes, network namespaces, the binary,
//! leftovers of killed runs), the runner that drives workloads, nemesis and checkers through a run, and the
//! results it writes (stats, timeline, plots).

pub(crate) mod binary;
pub(crate) mod cache_gate;
pub(crate) mod cleanup;
pub(crate) mod cluster;
pub(crate) mod hashkv;
pub(crate) mod netns;
pub(crate) mod plot;
pub(crate) mod results;
pub(crate) mod runner;
pub(crate) mod stats;
pub(crate) mod timeline;
