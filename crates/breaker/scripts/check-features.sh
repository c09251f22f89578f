#!/usr/bin/env bash
# Checks that trestle-breaker builds with each cargo feature alone, with none, and with all of them (library, tests,
# benches and examples that the features allow), so a `#[cfg(feature = ...)]` slip cannot hide behind the defaults.
#
#   crates/breaker/scripts/check-features.sh            # every feature
#   crates/breaker/scripts/check-features.sh hedge grpc # just these
#
# Uses CARGO_TARGET_DIR and CARGO_BUILD_JOBS from the environment (defaults: ~/.cache/trestle/target-breaker, 1 job).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trestle/target-breaker}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

features=("$@")
if [ ${#features[@]} -eq 0 ]; then
    # The [features] table of the crate's manifest, without `default`.
    mapfile -t features < <(sed -n '/^\[features\]/,/^\[/p' crates/breaker/Cargo.toml \
        | grep -E '^[a-z][a-z0-9-]* *=' | cut -d= -f1 | tr -d ' ' | grep -v '^default$')
    features=("" "${features[@]}" "ALL")
fi

failed=()
for feature in "${features[@]}"; do
    case "$feature" in
        "") label="(none)"; args=(--no-default-features) ;;
        ALL) label="(all)"; args=(--all-features) ;;
        *) label="$feature"; args=(--no-default-features --features "$feature") ;;
    esac
    echo "== trestle-breaker: $label"
    if ! cargo check -q -p trestle-breaker --all-targets "${args[@]}"; then
        failed+=("$label")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "every feature builds alone"
