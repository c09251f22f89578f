#!/usr/bin/env bash
# Proves the README's two commands work on a fresh Debian 12 machine, without a container engine.
#
# It builds a minimal Debian 12 root with debootstrap (`--variant=minbase`: no compiler, no protoc, no etcd, no
# CA certificates), copies this work tree into it (the files git tracks, plus untracked ones it does not ignore),
# mounts the host's Rust toolchain read-only (rustup's toolchains and the cargo proxies; nothing else of the
# host's: cargo's registry, cargo-nextest and the build directory start empty), and runs inside it, as root:
#
#   1. scripts/run.sh    until it prints ETCDCTL_ENDPOINTS=..., then the README's etcdctl commands against the
#                        cluster, then Ctrl-C (SIGINT), which must stop every node and exit 0;
#   2. scripts/test.sh   the whole suite, exactly as CI runs it.
#
# It prints one line per step with its result and wall time, and the tail of the log of a step that failed.
# Logs stay in $CLEAN_CHECK_DIR/logs. Needs root (debootstrap, chroot, mounts) and about half an hour on 2 cores: the
# RocksDB C++ build runs twice from nothing (release for run.sh, dev for test.sh).
#
#   CLEAN_CHECK_DIR   where the root and logs go         (default: /var/tmp/trestle-clean-check)
#   DEBIAN_MIRROR     the Debian archive to bootstrap from (default: the host's own apt source for Debian)
#   --keep            keep the root afterwards (it is removed by default; the next run starts from scratch anyway)
#   --only-run        step 1 only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

keep=0 only_run=0
for arg in "$@"; do
    case $arg in
        --keep) keep=1 ;;
        --only-run) only_run=1 ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (expected --keep, --only-run or --help)" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "the clean-system check needs root (debootstrap, chroot and mounts): run it with sudo"
command -v git >/dev/null || die "git is needed to list the work tree's files: apt-get install -y git"
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
        die "could not install debootstrap: apt-get update && apt-get install -y debootstrap"
fi

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[[ -d $rustup_home/toolchains && -x $cargo_bin/cargo ]] ||
    die "no rustup toolchain at $rustup_home with cargo in $cargo_bin: the check mounts the host's Rust toolchain"

host_mirror() {
    local m
    m=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -- '-security' | head -1)
    [[ -n $m ]] || m=$(grep -hs -E '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v -- '-security' | head -1)
    echo "$m"
}
mirror=${DEBIAN_MIRROR:-$(host_mirror)}
[[ -n $mirror ]] || die "no Debian mirror found in the host's apt sources: set DEBIAN_MIRROR"

work=${CLEAN_CHECK_DIR:-/var/tmp/trestle-clean-check}
root=$work/root
logs=$work/logs

# Prints the ids of the processes running inside the root whose command line matches the regex PATTERN (every
# one when PATTERN is empty). Always succeeds.
pids_in_root() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$root" ]] || continue
        if [[ -z $1 ]] || tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "$1"; then
            echo "${p#/proc/}"
        fi
    done
    return 0
}

# Kills whatever still runs inside the root, then unmounts everything below it (deepest first).
release_root() {
    local pid
    for pid in $(pids_in_root ''); do kill -KILL "$pid" 2>/dev/null || true; done
    # Network namespaces the suite left behind would keep their mounts busy.
    if [[ -d $root/run/netns ]]; then
        for ns in "$root"/run/netns/*; do [[ -e $ns ]] && umount -l "$ns" 2>/dev/null; done
    fi
    awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
finish() {
    release_root
    if ((keep == 0)) && [[ -d $root ]]; then rm -rf --one-file-system "$root"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

results=()
record() { results+=("$(printf '%-34s %-6s %6ss' "$1" "$2" "$3")"); }
report() {
    local source="the host's apt sources"
    [[ -n ${DEBIAN_MIRROR:-} ]] && source=DEBIAN_MIRROR
    say "clean-system check ($(date -u +%FT%TZ), $(nproc) cores, Debian mirror from $source)"
    printf '  %s\n' "${results[@]}"
}
fail() { # STEP SECONDS LOG
    record "$1" FAIL "$2"
    report
    printf '\nlast 40 lines of %s:\n' "$3" >&2
    tail -n 40 "$3" >&2
    exit 1
}

release_root
rm -rf --one-file-system "$root"
mkdir -p "$root" "$logs"
rm -f "$logs"/*

start=$SECONDS
say "debootstrap --variant=minbase bookworm (log: $logs/debootstrap.log)"
if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$logs/debootstrap.log" 2>&1; then
    fail debootstrap $((SECONDS - start)) "$logs/debootstrap.log"
fi
record "debootstrap minbase bookworm" ok $((SECONDS - start))

# No init system runs in a chroot: packages must not try to start services (etcd-server would).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# What Debian's installer writes on every machine; debootstrap leaves it out.
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
for ca in "${SSL_CERT_FILE:-}" "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${NODE_EXTRA_CA_CERTS:-}"; do
    if [[ -n $ca && -f $ca ]]; then
        mkdir -p "$root$(dirname "$ca")"
        cp "$ca" "$root$ca"
    fi
done
# And where a machine keeps a local CA, so that installing Debian's ca-certificates (a package the build's
# packages recommend) regenerates a bundle that still holds it.
if [[ -n ${SSL_CERT_FILE:-} && -f $SSL_CERT_FILE ]]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp "$SSL_CERT_FILE" "$root/usr/local/share/ca-certificates/host-ca.crt"
fi

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root/root/.rustup" "$root/opt/host-cargo-bin"
mount --bind "$rustup_home" "$root/root/.rustup" && mount -o remount,bind,ro "$root/root/.rustup"
mount --bind "$cargo_bin" "$root/opt/host-cargo-bin" && mount -o remount,bind,ro "$root/opt/host-cargo-bin"

say "copying the work tree into the root ($(git -C "$TRESTLE_ROOT" rev-parse --short HEAD)$(git -C "$TRESTLE_ROOT" diff --quiet HEAD || echo ', with uncommitted changes'))"
mkdir -p "$root/root/trestle"
git -C "$TRESTLE_ROOT" ls-files -z --cached --others --exclude-standard |
    (cd "$TRESTLE_ROOT" && xargs -0 -r sh -c 'for f; do if [ -e "$f" ]; then printf "%s\0" "$f"; fi; done' sh) |
    tar -C "$TRESTLE_ROOT" --null -T - -cf - | tar -C "$root/root/trestle" -xf -

# A newcomer's environment: HOME, a PATH with cargo's bin first, the CA file, proxies if the host uses them.
in_root() {
    local env=(HOME=/root LANG=C.UTF-8 TERM=dumb
        PATH=/root/.cargo/bin:/opt/host-cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    local v
    # The CA settings a machine behind a TLS-inspecting proxy needs, each tool its own: cargo and curl read
    # SSL_CERT_FILE, pip PIP_CERT (or REQUESTS_CA_BUNDLE), node NODE_EXTRA_CA_CERTS.
    for v in SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS http_proxy https_proxy HTTP_PROXY \
        HTTPS_PROXY no_proxy NO_PROXY; do
        [[ -n ${!v:-} ]] && env+=("$v=${!v}")
    done
    chroot "$root" /usr/bin/env -i "${env[@]}" /bin/bash -c "cd /root/trestle && $1"
}

# Step 1: the README's first command, then its etcdctl commands, then Ctrl-C.
run_log=$logs/run.log
start=$SECONDS
say "scripts/run.sh (log: $run_log)"
: >"$run_log"
in_root 'exec scripts/run.sh' >"$run_log" 2>&1 </dev/null &
run_pid=$!
deadline=$((SECONDS + ${CLEAN_CHECK_RUN_TIMEOUT:-5400}))
endpoints=
until endpoints=$(sed -n 's/^ETCDCTL_ENDPOINTS=//p' "$run_log" | head -1); [[ -n $endpoints ]]; do
    kill -0 "$run_pid" 2>/dev/null || fail "scripts/run.sh (until ready)" $((SECONDS - start)) "$run_log"
    ((SECONDS < deadline)) || fail "scripts/run.sh (timed out)" $((SECONDS - start)) "$run_log"
    sleep 5
done
record "scripts/run.sh until ready" ok $((SECONDS - start))

start=$SECONDS
if ! in_root "export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$endpoints
    etcdctl put greeting hello && etcdctl get greeting | grep -qx hello && etcdctl member list" \
    >"$logs/etcdctl.log" 2>&1; then
    kill -INT "$run_pid" 2>/dev/null || true
    fail "README's etcdctl commands" $((SECONDS - start)) "$logs/etcdctl.log"
fi
record "README's etcdctl commands" ok $((SECONDS - start))

# Ctrl-C: SIGINT to the cluster process (run.sh execs it), which must stop its nodes and exit 0 within a minute.
start=$SECONDS
cluster_pid=$(pids_in_root '^[^ ]*/trestle local-cluster' | head -n 1)
[[ -n $cluster_pid ]] || fail "Ctrl-C stops the cluster (no local-cluster process found)" 0 "$run_log"
kill -INT "$cluster_pid"
deadline=$((SECONDS + 60))
while kill -0 "$run_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
kill -0 "$run_pid" 2>/dev/null && fail "Ctrl-C stops the cluster (still running after 60 s)" 60 "$run_log"
status=0
wait "$run_pid" || status=$?
if ((status != 0)); then
    echo "exit status after SIGINT: $status" >>"$run_log"
    fail "Ctrl-C stops the cluster (exit status $status)" $((SECONDS - start)) "$run_log"
fi
[[ -z $(pids_in_root 'trestle serve') ]] ||
    fail "Ctrl-C stops the cluster (a node outlived it)" $((SECONDS - start)) "$run_log"
record "Ctrl-C stops the cluster" ok $((SECONDS - start))

if ((only_run == 0)); then
    test_log=$logs/test.log
    start=$SECONDS
    say "scripts/test.sh (log: $test_log)"
    if ! in_root 'scripts/test.sh' >"$test_log" 2>&1 </dev/null; then
        fail "scripts/test.sh" $((SECONDS - start)) "$test_log"
    fi
    record "scripts/test.sh" ok $((SECONDS - start))
    grep -E '^ +[a-z-]+ took [0-9]+s$|Summary|tests? run' "$test_log" | sed 's/^/    /' >>"$logs/stages.txt" || true
fi

report
[[ -s $logs/stages.txt ]] && { echo "  scripts/test.sh stages:"; cat "$logs/stages.txt"; }
exit 0
