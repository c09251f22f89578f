#!/usr/bin/env bash
# A rolling restart, side by side: a 3-node Trestle cluster and a 3-node etcd 3.4 on this machine, each with its
# default timing. `trestle bench rolling-restart` SIGTERMs and restarts each member in turn (as a rolling update
# does) while 16 clients write, then checks that every acknowledged write is there; it reports the longest time
# no write was acknowledged and the slowest write.
# Not a test: it takes a few minutes and its numbers depend on the machine.
#   BENCH_ROUNDS   rolling restarts per system (default 3)
#   BENCH_CLIENTS  concurrent writers (default 16)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"
source scripts/bench-clusters.sh
rounds="${BENCH_ROUNDS:-3}"
clients="${BENCH_CLIENTS:-16}"

say "machine: $(nproc) cores; $rounds rolling restarts per system, $clients writers"
for round in $(seq 1 "$rounds"); do
    "$trestle" bench rolling-restart --endpoints "$trestle_endpoints" --clients "$clients" --label trestle
    "$trestle" bench rolling-restart --endpoints "$etcd_endpoints" --clients "$clients" --label etcd
done
