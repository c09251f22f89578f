#!/usr/bin/env bash
# Side-by-side KV benchmark: a 3-node Trestle cluster and a 3-node etcd 3.4 (Debian's etcd-server) on this
# machine, the same `trestle bench kv` workload against each, at 1, 16 and 256 clients. Both keep their default
# durability: every acknowledged put is fsync'd on a majority. Prints a markdown table with the ratio.
# Not a test: it takes minutes and its numbers depend on the machine.
#   BENCH_TOTAL   operations per run (default 20000)
#   BENCH_ROUNDS  rounds (default 1). Each round runs every row once, Trestle and etcd back to back, so slow
#                 stretches of a shared machine hit both; the table gives medians and the spread of the ratio.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

source scripts/bench-clusters.sh
total="${BENCH_TOTAL:-20000}"
rounds="${BENCH_ROUNDS:-1}"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer, not '$rounds'"

say "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $total ops per run, 256 B values, 10000 keys, $rounds round(s)"
results="$work/results"
for round in $(seq "$rounds"); do
    for op in put range; do
        for clients in 1 16 256; do
            for system in trestle etcd; do
                endpoints=$trestle_endpoints; [[ $system == etcd ]] && endpoints=$etcd_endpoints
                n=$total; [[ $clients == 1 ]] && n=$((total / 10))
                line=$("$trestle" bench kv --endpoints "$endpoints" --op "$op" --clients "$clients" --total "$n" --label "$system")
                echo "round $round: $line"
                echo "$op $clients $system $round $line" >> "$results"
            done
        done
    done
done

# The median of one field over the rounds of a row (the lower of the two middle values for an even count);
# durations print as 875.00µs, 14.42ms or 1.20s.
median() {
    sed -n "s/.* $1=\([^ ]*\).*/\1/p" | awk '
        { v = $0; n = v + 0
          if (v ~ /µs$/) us = n; else if (v ~ /ms$/) us = n * 1000; else if (v ~ /s$/) us = n * 1000000; else us = n
          print us "\t" v }' | sort -g | awk -F'\t' '{ a[NR] = $2 } END { print a[int((NR + 1) / 2)] }'
}
echo
echo "| op | clients | Trestle ops/s | etcd ops/s | ratio | ratio range | Trestle p50 / p99 / p999 | etcd p50 / p99 / p999 |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for op in put range; do
    for clients in 1 16 256; do
        t=$(grep "^$op $clients trestle " "$results"); e=$(grep "^$op $clients etcd " "$results")
        tt=$(echo "$t" | median throughput | tr -d '/s'); et=$(echo "$e" | median throughput | tr -d '/s')
        ratio=$(awk -v a="$tt" -v b="$et" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
        # Per-round ratios: Trestle's and etcd's runs of one round ran back to back.
        spread=$(LC_ALL=C join \
                <(echo "$t" | awk '{ print $4, $0 }' | sed -n 's/^\([0-9]*\) .* throughput=\([0-9.]*\).*/\1 \2/p' | LC_ALL=C sort -k1,1) \
                <(echo "$e" | awk '{ print $4, $0 }' | sed -n 's/^\([0-9]*\) .* throughput=\([0-9.]*\).*/\1 \2/p' | LC_ALL=C sort -k1,1) |
            awk '$3 > 0 { r = $2 / $3; if (k++ == 0) lo = hi = r; if (r < lo) lo = r; if (r > hi) hi = r }
                 END { if (k) printf "%.2f–%.2f", lo, hi; else print "n/a" }')
        echo "| $op | $clients | $tt | $et | $ratio | $spread | $(echo "$t" | median p50) / $(echo "$t" | median p99) / $(echo "$t" | median p999) | $(echo "$e" | median p50) / $(echo "$e" | median p99) / $(echo "$e" | median p999) |"
    done
done
echo
echo "Medians over $rounds round(s) (the lower middle value for an even count); ratio = Trestle's median throughput / etcd's; ratio range = lowest and highest per-round ratio."
