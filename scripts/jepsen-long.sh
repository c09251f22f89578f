#!/usr/bin/env bash
# Long chaos runs: every workload against a real cluster with every nemesis, one after the other.
#
#   scripts/jepsen-long.sh                      # register, set, lock, election: 5 nodes, all nemeses, 600 s each
#   TIME=1800 NODES=3 WORKLOADS=set scripts/jepsen-long.sh
#   SEED=12345 scripts/jepsen-long.sh           # replay: the same seed gives the same schedule and op mix
#   PROFILE=release scripts/jepsen-long.sh      # optimised nodes (the first release build of RocksDB is slow)
#
# Run it as root for network namespaces, kernel packet drops and the disk-full nemesis (a tmpfs per node); without
# root it uses the loopback proxy mode, and NEMESIS must leave disk-full out (it is part of `all`).
# Results: $STORE/<workload>/<timestamp>/ (default store/), with a `latest` link; each run prints its summary.
# Exit status: 0 when every run is valid, else the worst (1 invalid, 2 unknown, 255 harness error).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

TIME="${TIME:-600}"
NODES="${NODES:-5}"
CONCURRENCY="${CONCURRENCY:-20}"
STORE="${STORE:-store}"
WORKLOADS="${WORKLOADS:-register set lock election}"
NEMESIS="${NEMESIS:-all}"
PROFILE="${PROFILE:-dev}"

profile_dir=debug
[[ "$PROFILE" == dev ]] || profile_dir="$PROFILE"
step build cargo build --profile "$PROFILE" -p trestle --bin trestle -p trestle-jepsen --bin trestle-jepsen
bin="$CARGO_TARGET_DIR/$profile_dir"

worst=0
for workload in $WORKLOADS; do
    say "long run: $workload, nemesis $NEMESIS, $NODES nodes, $TIME s"
    set +e
    "$bin/trestle-jepsen" test --workload "$workload" --nemesis "$NEMESIS" --nodes "$NODES" \
        --time-limit "$TIME" --concurrency "$CONCURRENCY" --store "$STORE" --trestle-bin "$bin/trestle" \
        ${SEED:+--seed "$SEED"}
    code=$?
    set -e
    say "$workload: exit $code"
    if ((code > worst)); then worst=$code; fi
done
exit "$worst"
