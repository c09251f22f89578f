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

# step NAME CMD...: runs one stage, prints its wall time, and stops the script on failure.
step() {
    local name=$1; shift
    local start=$SECONDS
    say "$name: $*"
    if ! "$@"; then
        printf 'FAILED: %s (after %ss)\n' "$name" "$((SECONDS - start))" >&2
        exit 1
    fi
    printf '    %s took %ss\n' "$name" "$((SECONDS - start))"
}
