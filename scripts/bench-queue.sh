#!/usr/bin/env bash
# The work queue end to end, side by side on this machine: a 3-node Trestle cluster, a 3-node RabbitMQ cluster
# with a quorum queue (Debian's rabbitmq-server) and a 3-node NATS cluster with a JetStream work-queue stream
# (Debian's nats-server), all on 127.0.0.1. `trestle bench queue` drives each with the same producers and
# consumers of 1 KiB messages (send, receive, ack) and reports throughput and p50/p99/p999 latency; rounds alternate
# between the systems, so that a change in the machine's other load hits all alike. Then the Trestle queue alone
# with 1 to 6 partitions. Prints the conditions, every round, and medians.
#
# Every server runs under `strace -f --seccomp-bpf -e trace=fsync,fdatasync` (only those calls stop the process),
# so each round also reports the fsyncs the whole cluster made per message sent. --no-fsync-count turns it off.
#
# --server-threads N gives every server process N scheduler threads: Trestle `serve --threads N`, RabbitMQ's
# Erlang VM `+S N:N`, NATS `GOMAXPROCS=N` (by default each takes one per core; three members of each cluster share
# this machine's cores).
#
# Usage: scripts/bench-queue.sh [--rounds 3] [--duration 10] [--warmup 2] [--producers 4] [--consumers 4]
#        [--send-batch 16] [--receive-batch 32] [--partitions 3] [--scaling "1 2 3 4 5 6"] [--systems "trestle
#        rabbitmq nats"] [--server-threads N] [--no-fsync-count]
# As root it installs rabbitmq-server, nats-server and strace with apt-get when they are missing.
# Not a test: it takes about (3 systems + 6 partition counts) x rounds x (duration + warm-up + ~5 s).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

rounds=3 duration=10 warmup=2 producers=4 consumers=4 send_batch=16 receive_batch=32 partitions=3
scaling="1 2 3 4 5 6" systems="trestle rabbitmq nats" fsync_count=1 server_threads=
while (($#)); do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --producers) producers=$2; shift 2 ;;
        --consumers) consumers=$2; shift 2 ;;
        --send-batch) send_batch=$2; shift 2 ;;
        --receive-batch) receive_batch=$2; shift 2 ;;
        --partitions) partitions=$2; shift 2 ;;
        --scaling) scaling=$2; shift 2 ;;
        --systems) systems=$2; shift 2 ;;
        --server-threads) server_threads=$2; shift 2 ;;
        --no-fsync-count) fsync_count=0; shift ;;
        *) die "unknown option $1 (see the header of $0)" ;;
    esac
done
[[ -z $server_threads || $server_threads =~ ^[1-9][0-9]*$ ]] || die "--server-threads must be a positive count"
max_partitions=$(printf '%s\n' "$partitions" $scaling | sort -n | tail -1)

# --- what the comparison needs ---------------------------------------------------------------------------------
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
((fsync_count)) && ! command -v strace >/dev/null && missing+=(strace)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} (Debian packages)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed (run apt-get update first?)"
    else
        die "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]}) or run this as root"
    fi
fi
rabbitmq_version=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo unknown)
nats_version=$(nats-server --version | awk '{print $2}')

say "building the release trestle binary"
progress cargo build --locked --release -p trestle --bin trestle
trestle="$CARGO_TARGET_DIR/release/trestle"

work=$(mktemp -d /tmp/trestle-bench-queue.XXXXXX)
host=$(hostname -s)
# Every server is started with setsid, so its process group id is its pid: stopping the group stops strace, the
# server and whatever it forked (Erlang's helpers), and nothing else.
groups=()
declare -A system_groups
rabbit_nodes=()
rabbitmqctl() { HOME="$work/rabbitmq" /usr/lib/rabbitmq/bin/rabbitmqctl "$@"; }
cleanup() {
    local node group
    for node in "${rabbit_nodes[@]}"; do rabbitmqctl -n "$node" stop >/dev/null 2>&1 || true; done
    for group in "${groups[@]}"; do kill -TERM -- "-$group" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for group in "${groups[@]}"; do kill -0 -- "-$group" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for group in "${groups[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# launch NAME CMD...: starts a server in its own process group, under strace when counting fsyncs.
launch() {
    local name=$1; shift
    local trace=()
    ((fsync_count)) && trace=(strace -f -qq --seccomp-bpf -e trace=fsync,fdatasync -o "$work/$name.fsync")
    setsid "${trace[@]}" "$@" >"$work/$name.log" 2>&1 &
    groups+=($!)
    system_groups[${name%-*}]+=" $!"
}

# fsyncs SYSTEM: the fsync and fdatasync calls its servers have made so far.
fsyncs() {
    ((fsync_count)) || { echo 0; return; }
    cat "$work/$1"-*.fsync 2>/dev/null | grep -cE '(^|[0-9] +)(fsync|fdatasync)\(' || true
}

wait_port() { # PORT WHAT
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    die "$2 did not listen on port $1 within 60 s (logs in $work)"
}

# cpu_of SYSTEM: CPU seconds its servers' processes used so far (user + system).
cpu_of() {
    local total=0 group pid
    for group in ${system_groups[$1]:-}; do
        for pid in $(pgrep -g "$group" || true); do
            total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
        done
    done
    awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# --- the three clusters ------------------------------------------------------------------------------------------
declare -A endpoints
wants() { [[ " $systems " == *" $1 "* ]]; }

if wants trestle || [[ -n $scaling ]]; then
    say "starting a 3-node Trestle cluster (--queue-partitions $max_partitions)"
    cluster="n0=http://127.0.0.1:24380,n1=http://127.0.0.1:24383,n2=http://127.0.0.1:24386"
    for i in 0 1 2; do
        client=$((24379 + 3 * i))
        RUST_LOG=warn launch "trestle-$i" "$trestle" serve --name "n$i" --data-dir "$work/trestle-$i.data" \
            --listen-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$((client + 1))" \
            --listen-metrics-urls "http://127.0.0.1:$((client + 2))" --initial-cluster "$cluster" \
            --queue-partitions "$max_partitions" ${server_threads:+--threads "$server_threads"}
    done
    endpoints[trestle]="http://127.0.0.1:24379,http://127.0.0.1:24382,http://127.0.0.1:24385"
    for port in 24379 24382 24385; do wait_port "$port" "trestle serve"; done
    # The partitions elect their leaders; creating a queue succeeds once they have.
    for _ in $(seq 60); do
        "$trestle" queue create bench-ready --partitions "$max_partitions" --endpoints "${endpoints[trestle]}" \
            >/dev/null 2>&1 && break
        sleep 1
    done
    "$trestle" queue stats bench-ready --endpoints "${endpoints[trestle]}" >/dev/null \
        || die "the Trestle cluster did not host queues within 60 s: $(tail -n 3 "$work"/trestle-0.log)"
fi

if wants rabbitmq; then
    say "starting a 3-node RabbitMQ $rabbitmq_version cluster"
    mkdir -p "$work/rabbitmq"
    echo '[].' >"$work/rabbitmq/enabled_plugins"
    for i in 1 2 3; do
        node="qbench$i-$$@$host"
        rabbit_nodes+=("$node")
        mkdir -p "$work/rabbitmq/n$i"
        printf 'listeners.tcp.1 = 127.0.0.1:%s\n' $((25671 + i)) >"$work/rabbitmq/n$i/rabbitmq.conf"
        HOME="$work/rabbitmq" RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT=$((25671 + i)) \
            RABBITMQ_DIST_PORT=$((25771 + i)) RABBITMQ_MNESIA_BASE="$work/rabbitmq-$i.data" \
            RABBITMQ_LOG_BASE="$work/rabbitmq/n$i/log" RABBITMQ_CONFIG_FILE="$work/rabbitmq/n$i/rabbitmq" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$work/rabbitmq/enabled_plugins" \
            RABBITMQ_PID_FILE="$work/rabbitmq/n$i/pid" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${server_threads:++S $server_threads:$server_threads}" \
            launch "rabbitmq-$i" /usr/lib/rabbitmq/bin/rabbitmq-server
    done
    # await_startup needs the Erlang node up already: until it is, it fails at once.
    for node in "${rabbit_nodes[@]}"; do
        for _ in $(seq 120); do
            rabbitmqctl -n "$node" await_startup --timeout 120 >/dev/null 2>&1 && break
            sleep 1
        done
        rabbitmqctl -n "$node" await_startup --timeout 5 >/dev/null \
            || die "RabbitMQ node $node did not start: $(tail -n 5 "$work"/rabbitmq-*.log)"
    done
    for node in "${rabbit_nodes[@]:1}"; do
        # (The joining node logs errors about connection tracking tables while it restarts: harmless.)
        rabbitmqctl -n "$node" stop_app -q 2>/dev/null
        rabbitmqctl -n "$node" join_cluster -q "${rabbit_nodes[0]}" 2>/dev/null
        rabbitmqctl -n "$node" start_app -q 2>/dev/null
    done
    running=$(rabbitmqctl -n "${rabbit_nodes[0]}" cluster_status --formatter json 2>/dev/null \
        | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))')
    [[ $running == 3 ]] || die "the RabbitMQ cluster has $running running nodes, not 3"
    endpoints[rabbitmq]="amqp://guest:guest@127.0.0.1:25672/%2f,amqp://guest:guest@127.0.0.1:25673/%2f"
    endpoints[rabbitmq]+=",amqp://guest:guest@127.0.0.1:25674/%2f"
fi

if wants nats; then
    say "starting a 3-node NATS $nats_version JetStream cluster"
    for i in 1 2 3; do
        cat >"$work/nats-$i.conf" <<EOF
server_name: qbench$i
listen: 127.0.0.1:$((24221 + i))
jetstream {
  store_dir: "$work/nats-$i.data"
  max_file_store: 8G
  max_memory_store: 256M
}
cluster {
  name: qbench
  listen: 127.0.0.1:$((26221 + i))
  routes: [nats-route://127.0.0.1:26222, nats-route://127.0.0.1:26223, nats-route://127.0.0.1:26224]
}
EOF
        launch "nats-$i" ${server_threads:+env "GOMAXPROCS=$server_threads"} nats-server -c "$work/nats-$i.conf"
    done
    for port in 24222 24223 24224; do wait_port "$port" nats-server; done
    endpoints[nats]="nats://127.0.0.1:24222,nats://127.0.0.1:24223,nats://127.0.0.1:24224"
    # JetStream answers once its meta group has a leader.
    for _ in $(seq 100); do grep -q 'JetStream cluster new metadata leader' "$work"/nats-*.log && break; sleep 0.2; done
fi

# --- conditions --------------------------------------------------------------------------------------------------
say "conditions"
echo "date: $(date -u +%FT%TZ)"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g \
    | awk '/Mem:/{print $2}') GiB; disk: $(df -h "$work" | awk 'NR==2{print $1, $2}'), data directories in $work"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other engineers build on the same 2 cores)"
echo "every server, client and load generator shares the 2 cores: no pinning"
echo "scheduler threads per server process: ${server_threads:-the default of each system (one per core)}"
echo "load: $producers producers (batches of $send_batch), $consumers consumers (batches of $receive_batch)," \
    "1 KiB payloads, ${warmup}s warm-up + ${duration}s measured per round, $rounds rounds per system"
wants trestle && echo "trestle: $("$trestle" --version), release build, 3 nodes, --queue-partitions $max_partitions, queue of" \
    "$partitions partitions; a send and an ack return once fsync'd on a majority of the partition's members"
wants rabbitmq && echo "rabbitmq: $rabbitmq_version (Erlang $(dpkg-query -W -f '${Version}' erlang-base)), 3 nodes," \
    "quorum queue (3 replicas); a publisher confirm once a majority fsync'd the message (Ra WAL, fdatasync)" \
    "; consumer acks are not confirmed in AMQP 0-9-1"
wants nats && echo "nats: $nats_version, 3 nodes, JetStream stream R3, file storage, work-queue retention, explicit" \
    "acks; a publish ack once a majority has the message in its files, fsync'd by a background flush every 60 s" \
    "(nats-server 2.9 has no setting to sync sooner: sync_interval and 'sync: always' arrived in 2.10.0), so" \
    "this is the only (and strongest) setting 2.9 offers; consumer acks are not confirmed (no AckAck)"
((fsync_count)) && echo "fsyncs: every server under strace -f --seccomp-bpf -e trace=fsync,fdatasync" \
    "(fsync and fdatasync calls per message sent, warm-up included, whole cluster)"
sleep 5
for system in trestle rabbitmq nats; do
    [[ -n ${endpoints[$system]:-} ]] || continue
    before=$(cpu_of "$system"); sleep 5; after=$(cpu_of "$system")
    echo "idle CPU of the $system cluster: $(awk -v a="$before" -v b="$after" 'BEGIN{printf "%.0f", (b - a) / 5 * 100}')%" \
        "of one core"
done

# --- rounds ------------------------------------------------------------------------------------------------------
results="$work/results.txt"
: >"$results"
# round LABEL SYSTEM PARTITIONS ROUND: runs one bench and appends
# "label partitions round acked/s p50_us p99_us p999_us fsyncs/msg errors" to the results.
round() {
    local label=$1 system=$2 parts=$3 n=$4 out="$work/round.out" before after line partition_args=()
    [[ $parts == - ]] || partition_args=(--partitions "$parts")
    before=$(fsyncs "$system")
    RUST_LOG=warn "$trestle" bench queue --system "$system" --endpoints "${endpoints[$system]}" \
        --producers "$producers" --consumers "$consumers" --duration "$duration" --warmup "$warmup" \
        --send-batch "$send_batch" --receive-batch "$receive_batch" "${partition_args[@]}" >"$out" 2>&1 \
        || { cat "$out" >&2; die "bench queue against $system failed"; }
    # strace writes a call's line when the call returns.
    sleep 1
    after=$(fsyncs "$system")
    line=$(grep '^result ' "$out") || { cat "$out" >&2; die "no result line from bench queue ($system)"; }
    awk -v l="$label" -v p="$parts" -v n="$n" -v f=$((after - before)) -v fc="$fsync_count" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        per = (fc && v["sent_total"] > 0) ? sprintf("%.3f", f / v["sent_total"]) : "-"
        printf "%s %s %s %s %s %s %s %s %s\n", l, p, n, v["acked_per_s"], v["p50_us"], v["p99_us"], v["p999_us"], per,
            v["errors"]
    }' <<<"$line" | tee -a "$results"
}

say "rounds: system partitions round msg/s p50_us p99_us p999_us fsyncs/msg errors"
for n in $(seq "$rounds"); do
    for system in $systems; do
        [[ -n ${endpoints[$system]:-} ]] || continue
        parts=$partitions
        [[ $system == trestle ]] || parts=-
        round "$system" "$system" "$parts" "$n"
    done
done
if [[ -n $scaling ]]; then
    say "Trestle with 1 to $max_partitions partitions: partitions round msg/s p50_us p99_us p999_us fsyncs/msg errors"
    for n in $(seq "$rounds"); do
        for parts in $scaling; do
            round scaling trestle "$parts" "$n"
        done
    done
fi

# --- medians -----------------------------------------------------------------------------------------------------
# median LABEL PARTITIONS COLUMN: the median of one column over the rounds of a configuration.
median() {
    awk -v l="$1" -v p="$2" -v c="$3" '$1 == l && $2 == p { print $c }' "$results" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'
}
ms() { awk -v u="$1" 'BEGIN { if (u == "-") print "-"; else printf "%.1f", u / 1000 }'; }
row() { # LABEL NAME PARTITIONS DURABILITY
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$2" "$(median "$1" "$3" 4)" "$(ms "$(median "$1" "$3" 5)")" \
        "$(ms "$(median "$1" "$3" 6)")" "$(ms "$(median "$1" "$3" 7)")" "$(median "$1" "$3" 8)" "$4"
}

say "medians over $rounds rounds (end to end: send, receive, ack; latency in ms)"
printf '| system | msg/s | p50 | p99 | p999 | fsyncs/msg | acknowledged when |\n|---|---|---|---|---|---|---|\n'
wants trestle && row trestle "Trestle, $partitions partitions" "$partitions" "fsync'd on a majority"
wants rabbitmq && row rabbitmq "RabbitMQ $rabbitmq_version quorum queue" - "fsync'd on a majority"
wants nats && row nats "NATS $nats_version JetStream R3" - "in a majority's files, fsync'd within 60 s"
if wants trestle && wants rabbitmq; then
    t=$(median trestle "$partitions" 4) r=$(median rabbitmq - 4) tp=$(median trestle "$partitions" 6)
    rp=$(median rabbitmq - 6)
    awk -v t="$t" -v r="$r" -v tp="$tp" -v rp="$rp" 'BEGIN {
        printf "Trestle / RabbitMQ: throughput %.2fx, p99 %.1f ms vs %.1f ms\n", t / r, tp / 1000, rp / 1000 }'
fi
if [[ -n $scaling ]]; then
    say "Trestle scaling, medians over $rounds rounds"
    printf '| partitions | msg/s | p50 | p99 | p999 | fsyncs/msg |\n|---|---|---|---|---|---|\n'
    for parts in $scaling; do
        printf '| %s | %s | %s | %s | %s | %s |\n' "$parts" "$(median scaling "$parts" 4)" \
            "$(ms "$(median scaling "$parts" 5)")" "$(ms "$(median scaling "$parts" 6)")" \
            "$(ms "$(median scaling "$parts" 7)")" "$(median scaling "$parts" 8)"
    done
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
