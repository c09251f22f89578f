#!/usr/bin/env bash
# One Trestle cache node against Debian's memcached with the same load generator and settings: memaslap
# (`memcaslap` in libmemcached-tools), 90% gets and 10% sets, fixed value sizes, server pinned to one core and
# the load generator to another. Prints throughput and latency percentiles per round and the median of the rounds.
#
# Usage: [TRESTLE_BIN=path] scripts/bench-cache.sh [--time 10s] [--rounds 3] [--concurrency 16] [--sizes "100 4096"] [--no-meta]
#                                [--no-client]
#
# Then, unless --no-meta: `trestle bench cache` (the meta protocol, mg/ms, 90% gets) against each server, pinned
# the same way; unless --no-client: `trestle bench cache --client` against two Trestle nodes on core 0 (a plain
# single-node get against replicated reads and writes). Both report p50/p99/p999 from an HDR histogram.
#
# Latency percentiles come from memaslap's log2 histogram (its only percentile source), so they are bucket upper
# bounds: "p99 256" means 99% of requests took under 256 us. The benchmark is a command, not a test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

time_per_round=10s rounds=3 concurrency=16 sizes="100 4096" meta=1 client=1
while (($#)); do
    case $1 in
        --time) time_per_round=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --no-meta) meta=0; shift ;;
        --no-client) client=0; shift ;;
        *) die "unknown option $1 (see the header of $0)" ;;
    esac
done

for tool in memcached memcaslap taskset; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/bootstrap.sh as root"
done
(($(nproc) >= 2)) || die "needs 2 cores: one for the server, one for the load generator"

# TRESTLE_BIN: a release binary built before (the shared target directory's may be replaced by another build
# during a run); otherwise this clone's is built.
if [[ -n ${TRESTLE_BIN:-} ]]; then
    trestle=$TRESTLE_BIN
else
    say "building the release trestle binary"
    (cd "$TRESTLE_ROOT" && progress cargo build --release --locked -p trestle)
    trestle="$CARGO_TARGET_DIR/release/trestle"
fi

work=$(mktemp -d)
server_pid=
second_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [[ -n $second_pid ]] && kill "$second_pid" 2>/dev/null && wait "$second_pid" 2>/dev/null
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
            RUST_LOG=warn taskset -c 0 "$trestle" cache serve --threads 1 --memcached-listen "127.0.0.1:$2" \
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

# server_hits PORT: prints "get_hits cmd_get" from the server's own stats.
server_hits() {
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'stats\r\nquit\r\n' >&3
    awk '$2 == "get_hits" { h = $3 } $2 == "cmd_get" { g = $3 } END { printf "%d %d\n", h + 0, g + 0 }' <&3
    exec 3>&-
}

# run_round NAME SIZE: prints "tps p50 p99 hit_ratio" (p50/p99 as log2 bucket upper bounds in microseconds; the
# share of gets that hit, from the server's stats: a server that refused memaslap's sets would answer every get
# with a cheap miss, and its numbers would mean nothing, so a round below half is an error).
run_round() {
    local port cfg="$work/memaslap.cfg" out="$work/out.txt"
    port=$(free_port)
    printf 'key\n16 16 1\nvalue\n%s %s 1\ncmd\n0 0.1\n1 0.9\n' "$2" "$2" >"$cfg"
    start_server "$1" "$port"
    taskset -c 1 memcaslap -s "127.0.0.1:$port" -F "$cfg" -T 1 -c "$concurrency" -t "$time_per_round" \
        -X "$2" -S "$time_per_round" >"$out" 2>&1 || { cat "$out" >&2; die "memaslap failed against $1"; }
    local hits gets ratio
    read -r hits gets < <(server_hits "$port")
    stop_server
    ratio=$(awk -v h="$hits" -v g="$gets" 'BEGIN { printf "%.3f", g ? h / g : 0 }')
    awk -v r="$ratio" 'BEGIN { exit !(r >= 0.5) }' ||
        die "$1 answered only $hits of $gets gets with a value (ratio $ratio): did it refuse memaslap's sets?"
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
            printf "%d %d %d %s\n", tps, p50, p99, ratio
        }' ratio="$ratio" "$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

say "conditions"
echo "date: $(date -u +%FT%TZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "memcached: $(memcached -V), 1 worker thread (-t 1), pinned to core 0"
echo "trestle: $("$trestle" --version), release build, --threads 1 (one thread, as memcached -t 1), pinned to core 0"
echo "load: memaslap, 1 thread, $concurrency connections, pinned to core 1, $time_per_round per round, $rounds rounds"
echo "(other processes on the machine share both cores: see the load averages)"
echo "workload: 90% get / 10% set, 16-byte keys, fixed value sizes: $sizes"

results="$work/results.txt"
: >"$results"
# Rounds alternate between the servers, so that a change in the machine's other load hits both alike.
for size in $sizes; do
    for round in $(seq "$rounds"); do
        for server in memcached trestle; do
            read -r tps p50 p99 ratio < <(run_round "$server" "$size")
            printf '%s %s %s %s %s %s %s\n' "$server" "$size" "$round" "$tps" "$p50" "$p99" "$ratio" |
                tee -a "$results"
        done
    done
done

say "medians over $rounds rounds (p50/p99: log2 bucket upper bounds, microseconds)"
printf '| server | value | ops/s | p50 | p99 | get hit ratio |\n|---|---|---|---|---|---|\n'
for size in $sizes; do
    for server in memcached trestle; do
        rows=$(awk -v s="$server" -v z="$size" '$1 == s && $2 == z' "$results")
        printf '| %s | %s B | %s | %s | %s | %s |\n' "$server" "$size" \
            "$(awk '{print $4}' <<<"$rows" | median)" "$(awk '{print $5}' <<<"$rows" | median)" \
            "$(awk '{print $6}' <<<"$rows" | median)" "$(awk '{print $7}' <<<"$rows" | median)"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

seconds=${time_per_round%s}
if ((meta)); then
    say "the meta protocol: trestle bench cache (mg/ms, 90% gets), $concurrency connections, ${seconds}s, $rounds rounds"
    meta_results="$work/meta.txt"
    : >"$meta_results"
    for size in $sizes; do
        for round in $(seq "$rounds"); do
            for server in memcached trestle; do
                port=$(free_port)
                start_server "$server" "$port"
                line=$(RUST_LOG=warn taskset -c 1 "$trestle" bench cache --nodes "127.0.0.1:$port" \
                    --concurrency "$concurrency" --seconds "$seconds" --value-size "$size" --seed "$round" |
                    grep '^| mg/ms')
                stop_server
                # | mg/ms 90% gets | ops/s | p50 | p99 | p999 | errors | misses |
                read -r tps p50 p99 p999 < <(awk -F'|' '{print $3, $4, $5, $6}' <<<"$line")
                printf '%s %s %s %s %s %s %s\n' "$server" "$size" "$round" "$tps" "$p50" "$p99" "$p999" |
                    tee -a "$meta_results"
            done
        done
    done
    say "meta protocol, medians over $rounds rounds (microseconds)"
    printf '| server | value | ops/s | p50 | p99 | p999 |\n|---|---|---|---|---|---|\n'
    for size in $sizes; do
        for server in memcached trestle; do
            rows=$(awk -v s="$server" -v z="$size" '$1 == s && $2 == z' "$meta_results")
            printf '| %s | %s B | %s | %s | %s | %s |\n' "$server" "$size" \
                "$(awk '{print $4}' <<<"$rows" | median)" "$(awk '{print $5}' <<<"$rows" | median)" \
                "$(awk '{print $6}' <<<"$rows" | median)" "$(awk '{print $7}' <<<"$rows" | median)"
        done
    done
fi

if ((client)); then
    say "the replicated client: trestle bench cache --client, two Trestle nodes on core 0, $rounds rounds"
    for round in $(seq "$rounds"); do
        p1=$(free_port) p2=$(free_port)
        start_server trestle "$p1"
        second_pid=$server_pid
        start_server trestle "$p2"
        RUST_LOG=warn taskset -c 1 "$trestle" bench cache --client --nodes "127.0.0.1:$p1,127.0.0.1:$p2" \
            --concurrency "$concurrency" --seconds "$seconds" --seed "$round" | grep '^| [gs]et' |
            sed "s/^/round $round /" | tee -a "$work/client.txt"
        stop_server
        kill "$second_pid" && wait "$second_pid" 2>/dev/null || true
        second_pid=
    done
    say "replicated client, medians over $rounds rounds (microseconds)"
    printf '| phase | ops/s | p50 | p99 | p999 | errors |\n|---|---|---|---|---|---|\n'
    awk -F'|' '{print $2}' "$work/client.txt" | sort -u | while read -r phase; do
        rows=$(awk -F'|' -v p=" $phase " '$2 == p' "$work/client.txt")
        printf '| %s | %s | %s | %s | %s | %s |\n' "$phase" \
            "$(awk -F'|' '{print $3}' <<<"$rows" | median)" "$(awk -F'|' '{print $4}' <<<"$rows" | median)" \
            "$(awk -F'|' '{print $5}' <<<"$rows" | median)" "$(awk -F'|' '{print $6}' <<<"$rows" | median)" \
            "$(awk -F'|' '{print $7}' <<<"$rows" | median)"
    done
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
