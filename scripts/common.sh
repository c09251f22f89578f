# shellcheck shell=bash
# Shared by the project's scripts: sourced, not run.
# Where builds go. Outside the clone, so a fresh clone on the same machine reuses a warm build; the cold path
# (an empty directory) works the same, only slower.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/trestle/target}"
# Two cores: one rustc per core, and RocksDB's C++ build gets the same.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-$(nproc)}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Fail on warnings in docs the same way clippy does.
export RUSTDOCFLAGS="${RUSTDOCFLAGS:--D warnings}"

TRESTLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TRESTLE_ROOT

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The build compiles RocksDB's C++ once per profile (debug for the tests, release for run.sh); nothing shows for
# minutes while it does. rocksdb_notice PROFILE says so before a build that has not done it yet.
rocksdb_notice() {
    compgen -G "$CARGO_TARGET_DIR/$1/build/librocksdb-sys-*/out/librocksdb.a" >/dev/null && return 0
    say "first $1 build in $CARGO_TARGET_DIR: it compiles RocksDB's C++, which takes $2 on 2 cores" \
        "(later builds reuse it)"
}

# progress CMD...: runs CMD; when the output is not a terminal (a log, CI), prints a line every two minutes so a
# long quiet stretch (RocksDB's C++) is visibly alive. On a terminal cargo's own progress bar does that.
progress() {
    if [[ -t 1 ]]; then
        "$@"
        return
    fi
    local start=$SECONDS ticker status=0
    (while sleep 120; do printf '    ... still running: %s min\n' "$(((SECONDS - start) / 60))"; done) &
    ticker=$!
    "$@" || status=$?
    kill "$ticker" 2>/dev/null
    wait "$ticker" 2>/dev/null || true
    return "$status"
}

# step NAME CMD...: runs one stage, prints its wall time, and stops the script on failure.
step() {
    local name=$1; shift
    local start=$SECONDS
    say "$name: $*"
    if ! progress "$@"; then
        printf 'FAILED: %s (after %ss)\n' "$name" "$((SECONDS - start))" >&2
        exit 1
    fi
    printf '    %s took %ss\n' "$name" "$((SECONDS - start))"
}
