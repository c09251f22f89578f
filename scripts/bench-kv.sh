#!/usr/bin/env bash
# Side-by-side KV benchmark: a 3-node Trestle cluster and a 3-node etcd 3.4 (Debian's etcd-server) on this
# machine, the same `trestle bench kv` workload against each, at 1, 16 and 256 clients. Both keep their default
# durability: every acknowledged put is fsync'd on a majority. Prints a markdown table with the ratio.
# Not a test: it takes minutes and its numbers depend on the machine.
#   BENCH_TOTAL   operations per run (default 20000)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

source scripts/bench-clusters.sh
total="${BENCH_TOTAL:-20000}"

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
