#!/usr/bin/env bash
# Side-by-side lock and election benchmark: a 3-node Trestle cluster and a 3-node etcd 3.4 on this machine, the
# same workloads against each. Prints a markdown table with the ratio.
#   lock cycles/s: acquire + release through trestle-lock's Mutex, 1 client (uncontended) and 16 clients on one
#                  lock (contended)
#   election failover: a leader process is SIGKILLed; time until another candidate leads (TTL 2 s)
# Not a test: it takes minutes and its numbers depend on the machine.
#   BENCH_CYCLES   lock cycles per run (default 400)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"
source scripts/bench-clusters.sh
cycles="${BENCH_CYCLES:-400}"

say "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $cycles lock cycles per run"
results="$work/results"
for clients in 1 16; do
    for system in trestle etcd; do
        endpoints=$trestle_endpoints; [[ $system == etcd ]] && endpoints=$etcd_endpoints
        line=$("$trestle" bench lock --endpoints "$endpoints" --clients "$clients" --cycles "$cycles" --label "$system")
        echo "$line"
        echo "lock $clients $system $line" >> "$results"
    done
done
for system in trestle etcd; do
    endpoints=$trestle_endpoints; [[ $system == etcd ]] && endpoints=$etcd_endpoints
    line=$("$trestle" bench election-failover --endpoints "$endpoints" --rounds 5 --ttl 2 --label "$system")
    echo "$line"
    echo "failover 0 $system $line" >> "$results"
done

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
echo
echo "| workload | Trestle | etcd | ratio | Trestle p50 / p99 | etcd p50 / p99 |"
echo "| --- | --- | --- | --- | --- | --- |"
for clients in 1 16; do
    t=$(grep "^lock $clients trestle " "$results"); e=$(grep "^lock $clients etcd " "$results")
    tt=$(echo "$t" | field throughput | tr -d '/s'); et=$(echo "$e" | field throughput | tr -d '/s')
    ratio=$(awk -v a="$tt" -v b="$et" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    echo "| lock cycles/s, $clients client(s) | $tt | $et | $ratio | $(echo "$t" | field p50) / $(echo "$t" | field p99) | $(echo "$e" | field p50) / $(echo "$e" | field p99) |"
done
t=$(grep "^failover 0 trestle " "$results"); e=$(grep "^failover 0 etcd " "$results")
echo "| election failover (median, max), TTL 2 s | $(echo "$t" | field median), $(echo "$t" | field max) | $(echo "$e" | field median), $(echo "$e" | field max) | | | |"
