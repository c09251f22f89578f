#!/usr/bin/env bash
# One Trestle cache node against Debian's memcached with the same load generator and settings: memaslap
# (`memcaslap` in libmemcached-tools), 90% gets and 10% sets, fixed value sizes, server pinned to one core and
# the load generator to another. Prints throughput and latency percentiles per round and the median of the rounds.
#
# Usage: scripts/bench-cache.sh [--time 10s] [--rounds 3] [--concurrency 16] [--sizes "100 4096"]
#
# Latency percentiles come from memaslap's log2 histogram (its only percentile source), so they are bucket upper
# bounds: "p99 256" means 99% of requests took under 256 us. The benchmark is a command, not a test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

time_per_round=10s rounds=3 concurrency=16 sizes="100 4096"
while (($#)); do
    case $1 in
        --time) time_per_round=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        *) die "unknown option $1 (see the header of $0)" ;;
    esac
done

for tool in memcached memcaslap taskset; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/bootstrap.sh as root"
done
(($(nproc) >= 2)) || die "needs 2 cores: one for the server, one for the load generator"

say "building the release trestle binary"
(cd "$TRESTLE_ROOT" && progress cargo build --release --locked -p trestle)
trestle="$CARGO_TARGET_DIR/release/trestle"

work=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    local port=$1 deadline=$((SECONDS + 10))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        ((SECONDS < deadline)) || die "nothing listens on $port after 10 s"
        sleep 0.1
    done
}

start_server() { # NAME PORT
    case $1 in
        memcached)
            local user=()
            [[ $(id -u) == 0 ]] && user=(-u root)
            taskset -c 0 memcached -l 127.0.0.1 -p "$2" -U 0 -m 1024 -t 1 -c 4096 "${user[@]}" &
            ;;
        trestle)
            RUST_LOG=warn taskset -c 0 "$trestle" cache serve --memcached-listen "127.0.0.1:$2" \
                --memory $((1024 * 1024 * 1024)) --max-connections 4096 &
            ;;
    esac
    server_pid=$!
    wait_port "$2"
}

stop_server() {
    kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# run_round NAME SIZE: prints "tps p50 p99" (p50/p99 as log2 bucket upper bounds in microseconds).
run_round() {
    local port cfg="$work/memaslap.cfg" out="$work/out.txt"
    port=$(free_port)
    printf 'key\n16 16 1\nvalue\n%s %s 1\ncmd\n0 0.1\n1 0.9\n' "$2" "$2" >"$cfg"
    start_server "$1" "$port"
    taskset -c 1 memcaslap -s "127.0.0.1:$port" -F "$cfg" -T 1 -c "$concurrency" -t "$time_per_round" \
        -X "$2" -S "$time_per_round" >"$out" 2>&1 || { cat "$out" >&2; die "memaslap failed against $1"; }
    stop_server
    awk '
        /^Total Statistics$/ { table = 1 }
        table && /^Global/ { tps = $4; table = 0 }
        /^Total Statistics \(/ { hist = 1; next }
        hist && /Log2 Dist/ { next }
        hist && /^ +[0-9]+:/ {
            base = $1 + 0
            for (i = 2; i <= NF; i++) { count[base + i - 2] = $i; total += $i }
            next
        }
        hist && !/^ +[0-9]+:/ && total > 0 { hist = 0 }
        END {
            seen = 0; p50 = p99 = 0
            for (k = 0; k < 64; k++) {
                seen += count[k]
                if (!p50 && seen >= 0.50 * total) p50 = 2 ^ (k + 1)
                if (!p99 && seen >= 0.99 * total) p99 = 2 ^ (k + 1)
            }
            printf "%d %d %d\n", tps, p50, p99
        }' "$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

say "conditions"
echo "date: $(date -u +%FT%TZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "memcached: $(memcached -V), 1 worker thread (-t 1), pinned to core 0"
echo "trestle: $("$trestle" --version), release build, pinned to core 0 (its runtime sees one core)"
echo "load: memaslap, 1 thread, $concurrency connections, pinned to core 1, $time_per_round per round, $rounds rounds"
echo "(other processes on the machine share both cores: see the load averages)"
echo "workload: 90% get / 10% set, 16-byte keys, fixed value sizes: $sizes"

results="$work/results.txt"
: >"$results"
# Rounds alternate between the servers, so that a change in the machine's other load hits both alike.
for size in $sizes; do
    for round in $(seq "$rounds"); do
        for server in memcached trestle; do
            read -r tps p50 p99 < <(run_round "$server" "$size")
            printf '%s %s %s %s %s %s\n' "$server" "$size" "$round" "$tps" "$p50" "$p99" | tee -a "$results"
        done
    done
done

say "medians over $rounds rounds (p50/p99: log2 bucket upper bounds, microseconds)"
printf '| server | value | ops/s | p50 | p99 |\n|---|---|---|---|---|\n'
for size in $sizes; do
    for server in memcached trestle; do
        rows=$(awk -v s="$server" -v z="$size" '$1 == s && $2 == z' "$results")
        printf '| %s | %s B | %s | %s | %s |\n' "$server" "$size" \
            "$(awk '{print $4}' <<<"$rows" | median)" "$(awk '{print $5}' <<<"$rows" | median)" \
            "$(awk '{print $6}' <<<"$rows" | median)"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
