#!/usr/bin/env bash
# Checks deploy/ without a container engine or a cluster:
#   1. hadolint lints every Dockerfile under deploy/docker;
#   2. `kubectl kustomize` renders every overlay under deploy/k8s/overlays;
#   3. kubernetes-validate checks every rendered object against the Kubernetes schemas, strictly (unknown fields
#      are errors), for the oldest and the newest Kubernetes version it covers that we support;
#   4. deploy/check/manifests.py cross-checks the objects with each other and with the binary's flags and
#      routes, runs the store's start script, and must catch every fault it plants.
# Every tool must be there (scripts/bootstrap.sh installs them): a missing one fails the check, never skips it.
#
#   --cluster   then also runs every overlay's store pods as real processes on loopback (deploy/check/loopback.py:
#               the cluster forms, with TLS where the overlay has it; a rolling update under writes loses no
#               acknowledged write; a member is added as a learner, promoted and removed). Needs root and the
#               `trestle` binary: $TRESTLE_BINARY, or else it is built here (cargo build -p trestle, debug).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TRESTLE_ROOT"

cluster=0
for arg in "$@"; do
    case $arg in
        --cluster) cluster=1 ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (expected --cluster or --help)" ;;
    esac
done

# Where scripts/bootstrap.sh installs the Python tools (keep the two in step).
venv=${TRESTLE_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/trestle/deploy-venv}
kube_versions=(1.25.0 1.37.0)

for tool in kubectl "$venv/bin/hadolint" "$venv/bin/kubernetes-validate" "$venv/bin/python"; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/bootstrap.sh"
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

dockerfiles=(deploy/docker/*Dockerfile)
[[ -e ${dockerfiles[0]} ]] || die "no Dockerfile under deploy/docker"
say "hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}'): ${dockerfiles[*]}"
"$venv/bin/hadolint" --failure-threshold info "${dockerfiles[@]}"

rendered=()
for dir in deploy/k8s/overlays/*/; do
    overlay=$(basename "$dir")
    say "render $dir with kubectl kustomize (kubectl $(kubectl version --client 2>/dev/null | grep -o "v[0-9]*\.[0-9]*\.[0-9]*" | head -1))"
    # Newer kustomize warns that `bases` and `patchesStrategicMerge` are deprecated; kubectl 1.20's (Debian 12)
    # knows nothing newer, so the overlays keep them. Other messages are shown.
    kubectl kustomize "$dir" >"$out/$overlay.yaml" 2>"$out/$overlay.err" ||
        { cat "$out/$overlay.err" >&2; die "kustomize could not render $dir"; }
    grep -v "^# Warning: '\(bases\|patchesStrategicMerge\)' is deprecated" "$out/$overlay.err" >&2 || true
    [[ -s $out/$overlay.yaml ]] || die "$dir rendered nothing"
    for version in "${kube_versions[@]}"; do
        "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "$out/$overlay.yaml" ||
            die "$overlay: objects do not validate against Kubernetes $version"
    done
    printf '    %s: %s objects valid against Kubernetes %s (strict)\n' "$overlay" \
        "$(grep -c '^kind:' "$out/$overlay.yaml")" "${kube_versions[*]}"
    rendered+=("$overlay=$out/$overlay.yaml")
done
((${#rendered[@]})) || die "no overlay under deploy/k8s/overlays"

say "cross-check the rendered objects (deploy/check/manifests.py, with planted faults)"
"$venv/bin/python" deploy/check/manifests.py --repo "$TRESTLE_ROOT" --self-test "${rendered[@]}"

if ((cluster)); then
    [[ $(id -u) -eq 0 ]] || die "--cluster needs root: each pod process gets its own /etc/hosts in a mount namespace"
    for tool in etcdctl unshare openssl; do
        command -v "$tool" >/dev/null || die "$tool is missing: run scripts/bootstrap.sh"
    done
    binary=${TRESTLE_BINARY:-}
    if [[ -z $binary ]]; then
        rocksdb_notice debug "about 7 minutes"
        step build-trestle cargo build --locked -p trestle
        binary=$CARGO_TARGET_DIR/debug/trestle
    fi
    [[ -x $binary ]] || die "no trestle binary at $binary"
    for item in "${rendered[@]}"; do
        say "the ${item%%=*} overlay's store pods as processes on loopback (deploy/check/loopback.py, $binary)"
        "$venv/bin/python" deploy/check/loopback.py --binary "$binary" "${item#*=}"
    done
fi
say "deploy checks passed"
