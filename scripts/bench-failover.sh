#!/usr/bin/env bash
# Leader failover, side by side: a 3-node Trestle cluster and a 3-node etcd 3.4 on this machine, each with its
# default timing. `trestle bench failover` kills the Raft leader with SIGKILL while a client writes, measures the
# time to the first acknowledged write, restarts the killed member, and repeats; then the same with SIGTERM (a
# graceful stop, as in a rolling restart: both hand their leadership over before exiting).
# Not a test: it takes a minute and its numbers depend on the machine.
#   BENCH_ROUNDS   leader kills per system (default 7)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"
source scripts/bench-clusters.sh
rounds="${BENCH_ROUNDS:-7}"

say "machine: $(nproc) cores; $rounds leader stops per system and signal"
for signal in kill term; do
    "$trestle" bench failover --endpoints "$trestle_endpoints" --rounds "$rounds" --signal "$signal" --label trestle
    "$trestle" bench failover --endpoints "$etcd_endpoints" --rounds "$rounds" --signal "$signal" --label etcd
done
