#!/usr/bin/env bash
# Installs what Trestle's build and tests need, only when it is missing. Safe to run again and again.
#
#   clang, libclang-dev   RocksDB's C++ build and its bindgen bindings
#   protobuf-compiler     protoc, for the gRPC code generated from etcd's .proto files
#   pkg-config            native library discovery for -sys crates
#   etcd-server, etcd-client
#                         a real etcd 3.4 and etcdctl: compatibility tests and side-by-side benchmarks
#   cargo-nextest         the test runner (from crates.io when the machine lacks it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

packages=(clang libclang-dev protobuf-compiler pkg-config etcd-server etcd-client)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        die "missing Debian packages: ${missing[*]}
  install them as root:  apt-get update && apt-get install -y ${missing[*]}
  then run this command again."
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's etcd-server would start a system etcd on the default ports; tests start their own on loopback.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
else
    say "Debian packages present: ${packages[*]}"
fi

command -v cargo >/dev/null || die "cargo is not on PATH: install a Rust toolchain (rustup) first"

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest from crates.io (one-time, a few minutes)"
    cargo install --locked cargo-nextest
fi
