#!/usr/bin/env bash
# Shared by the side-by-side benchmarks: builds the release binary and starts a 3-node Trestle cluster and a
# 3-node etcd (Debian's etcd-server) on this machine, both with default durability (every acknowledged write
# fsync'd on a majority). Sets $trestle, $trestle_endpoints, $etcd_endpoints and $work; stops both on exit.
# Source it after common.sh. TRESTLE_SERVE_ARGS adds options to every `trestle serve` (e.g. timing).

bash scripts/bootstrap.sh
say "building trestle (release)"
cargo build --locked --release -p trestle --bin trestle
trestle="$CARGO_TARGET_DIR/release/trestle"
work=$(mktemp -d /tmp/trestle-bench.XXXXXX)
cleanup() {
    # Every server runs with a data directory under $work, including members a benchmark restarted itself.
    pkill -TERM -f "$work" 2>/dev/null || true
    for _ in $(seq 100); do pgrep -f "$work" >/dev/null || break; sleep 0.1; done
    pkill -KILL -f "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

say "starting a 3-node Trestle cluster"
# Separate `trestle serve` processes (not `local-cluster`, which stops every node when one dies), so a benchmark
# may kill and restart members.
tcluster="n0=http://127.0.0.1:32380,n1=http://127.0.0.1:32383,n2=http://127.0.0.1:32386"
for i in 0 1 2; do
    client=$((32379 + 3 * i)); peer=$((client + 1)); metrics=$((client + 2))
    "$trestle" serve --name "n$i" --data-dir "$work/trestle$i" --listen-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --listen-metrics-urls "http://127.0.0.1:$metrics" \
        --initial-cluster "$tcluster" ${TRESTLE_SERVE_ARGS:-} > "$work/trestle$i.log" 2>&1 &
done
trestle_endpoints="http://127.0.0.1:32379,http://127.0.0.1:32382,http://127.0.0.1:32385"
for _ in $(seq 600); do
    ETCDCTL_API=3 etcdctl --endpoints="$trestle_endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.1
done
ETCDCTL_API=3 etcdctl --endpoints="$trestle_endpoints" endpoint health >/dev/null 2>&1 \
    || die "the Trestle cluster did not start: $(tail -5 "$work"/trestle*.log)"

say "starting a 3-node etcd $(etcd --version | head -1 | awk '{print $3}') cluster"
cluster="e0=http://127.0.0.1:22380,e1=http://127.0.0.1:22382,e2=http://127.0.0.1:22384"
for i in 0 1 2; do
    client=$((22379 + 2 * i)); peer=$((22380 + 2 * i))
    etcd --name "e$i" --data-dir "$work/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new --log-level error > "$work/etcd$i.log" 2>&1 &
done
etcd_endpoints="http://127.0.0.1:22379,http://127.0.0.1:22381,http://127.0.0.1:22383"
for _ in $(seq 600); do
    ETCDCTL_API=3 etcdctl --endpoints="$etcd_endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.1
done

