#!/usr/bin/env bash
# Side-by-side KV benchmark: a 3-node Trestle cluster and a 3-node etcd 3.4 (Debian's etcd-server) on this
# machine, the same `trestle bench kv` workload against each, at 1, 16 and 256 clients. Both keep their default
# durability: every acknowledged put is fsync'd on a majority. Prints a markdown table with the ratio.
# Not a test: it takes minutes and its numbers depend on the machine.
#   BENCH_TOTAL   operations per run (default 20000)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

bash scripts/bootstrap.sh
say "building trestle (release)"
cargo build --locked --release -p trestle --bin trestle
trestle="$CARGO_TARGET_DIR/release/trestle"
total="${BENCH_TOTAL:-20000}"
work=$(mktemp -d /tmp/trestle-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

say "starting a 3-node Trestle cluster"
"$trestle" local-cluster --nodes 3 --data-dir "$work/trestle" --port-base 32379 > "$work/trestle.out" 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q ETCDCTL_ENDPOINTS "$work/trestle.out" && break; sleep 0.1; done
trestle_endpoints=$(sed -n 's/^ETCDCTL_ENDPOINTS=//p' "$work/trestle.out")
[[ -n $trestle_endpoints ]] || die "the Trestle cluster did not start: $(cat "$work/trestle.out")"

say "starting a 3-node etcd $(etcd --version | head -1 | awk '{print $3}') cluster"
cluster="e0=http://127.0.0.1:22380,e1=http://127.0.0.1:22382,e2=http://127.0.0.1:22384"
for i in 0 1 2; do
    client=$((22379 + 2 * i)); peer=$((22380 + 2 * i))
    etcd --name "e$i" --data-dir "$work/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new --log-level error > "$work/etcd$i.log" 2>&1 &
    pids+=($!)
done
etcd_endpoints="http://127.0.0.1:22379,http://127.0.0.1:22381,http://127.0.0.1:22383"
for _ in $(seq 600); do
    ETCDCTL_API=3 etcdctl --endpoints="$etcd_endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.1
done

say "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $total ops per run, 256 B values, 10000 keys"
results="$work/results"
for op in put range; do
    for clients in 1 16 256; do
        for system in trestle etcd; do
            endpoints=$trestle_endpoints; [[ $system == etcd ]] && endpoints=$etcd_endpoints
            n=$total; [[ $clients == 1 ]] && n=$((total / 10))
            line=$("$trestle" bench kv --endpoints "$endpoints" --op "$op" --clients "$clients" --total "$n" --label "$system")
            echo "$line"
            echo "$op $clients $system $line" >> "$results"
        done
    done
done

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
echo
echo "| op | clients | Trestle ops/s | etcd ops/s | ratio | Trestle p50 / p99 / p999 | etcd p50 / p99 / p999 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for op in put range; do
    for clients in 1 16 256; do
        t=$(grep "^$op $clients trestle " "$results"); e=$(grep "^$op $clients etcd " "$results")
        tt=$(echo "$t" | field throughput | tr -d '/s'); et=$(echo "$e" | field throughput | tr -d '/s')
        ratio=$(awk -v a="$tt" -v b="$et" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
        echo "| $op | $clients | $tt | $et | $ratio | $(echo "$t" | field p50) / $(echo "$t" | field p99) / $(echo "$t" | field p999) | $(echo "$e" | field p50) / $(echo "$e" | field p99) / $(echo "$e" | field p999) |"
    done
done
