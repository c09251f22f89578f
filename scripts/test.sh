#!/usr/bin/env bash
# The whole test suite: the README's second quick-start command, and what CI runs.
#   formatting, clippy (warnings denied), each optional feature of trestle-breaker built alone, trestle-etcd as a
#   client only, rustdoc (warnings denied), unit and integration tests (nextest), doc tests.
# Long chaos runs and benchmarks are separate commands (see README.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"
total=$SECONDS

step bootstrap bash scripts/bootstrap.sh
say "build directory: $CARGO_TARGET_DIR"
rocksdb_notice debug "about 7 minutes"
step fmt cargo fmt --all -- --check
step deploy bash scripts/check-deploy.sh
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step features env CARGO_BUILD_JOBS="$(nproc)" bash crates/breaker/scripts/check-features.sh
# trestle-etcd as a client only (what trestle-lock, trestle-election and the shard router build): no RocksDB.
step etcd-client-only cargo clippy -p trestle-etcd --no-default-features --locked -- -D warnings
# trestle-queue's partition alone (no Raft host, no RocksDB).
step queue-core-only cargo clippy -p trestle-queue --no-default-features --locked -- -D warnings
step docs cargo doc --workspace --no-deps --locked
step tests cargo nextest run --workspace --locked --no-fail-fast
step doctests cargo test --workspace --doc --locked

say "all checks passed in $((SECONDS - total))s"
