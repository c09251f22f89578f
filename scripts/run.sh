#!/usr/bin/env bash
# The README's first quick-start command: builds Trestle and starts a local 3-node cluster in the foreground.
# Ctrl-C stops every node; running it again brings the same cluster back with its data.
#   TRESTLE_DATA_DIR   where the nodes keep their data   (default: ./.trestle/local-cluster)
#   TRESTLE_PORT_BASE  first port; each node takes 3     (default: 2379)
#   TRESTLE_NODES      how many nodes                    (default: 3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

bash scripts/bootstrap.sh
rocksdb_notice release "about 12 minutes"
step "build trestle (release)" cargo build --locked --release -p trestle --bin trestle
exec "$CARGO_TARGET_DIR/release/trestle" local-cluster \
    --nodes "${TRESTLE_NODES:-3}" \
    --data-dir "${TRESTLE_DATA_DIR:-$TRESTLE_ROOT/.trestle/local-cluster}" \
    --port-base "${TRESTLE_PORT_BASE:-2379}"
