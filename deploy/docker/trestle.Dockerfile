# syntax=docker/dockerfile:1
# The `trestle` image: `trestle serve` (the store) and `trestle cache serve` (cache nodes) from one binary.
#
#   docker build -f deploy/docker/trestle.Dockerfile -t trestle:dev .      (from the repository root)
#
# The builder compiles the workspace's dependencies first, from the manifests alone, so that a change to Trestle's
# sources reuses that layer (RocksDB's C++ alone takes many minutes); then it builds the real binary. The runtime
# stage is Debian 12 slim with the binary, a non-root user and nothing else: the pod keeps its data on a volume
# and runs with a read-only root filesystem.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# What scripts/bootstrap.sh installs for the build: libclang and clang's headers for bindgen (RocksDB's
# bindings), protoc and protobuf's well-known types for the gRPC code. The compilers come with the rust image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# 1. Manifests only, with empty sources in place of every member's targets: this layer builds the dependencies
#    and stays cached until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/config.toml .cargo/config.toml
COPY crates/raft/Cargo.toml crates/raft/Cargo.toml
COPY crates/etcd/Cargo.toml crates/etcd/Cargo.toml
COPY crates/lock/Cargo.toml crates/lock/Cargo.toml
COPY crates/election/Cargo.toml crates/election/Cargo.toml
COPY crates/shard-router/Cargo.toml crates/shard-router/Cargo.toml
COPY crates/cache/Cargo.toml crates/cache/Cargo.toml
COPY crates/queue/Cargo.toml crates/queue/Cargo.toml
COPY crates/breaker/Cargo.toml crates/breaker/Cargo.toml
COPY crates/trestle/Cargo.toml crates/trestle/Cargo.toml
COPY reference-app/Cargo.toml reference-app/Cargo.toml
COPY jepsen/Cargo.toml jepsen/Cargo.toml
RUN set -eu; \
    for dir in crates/* reference-app jepsen; do \
        mkdir -p "$dir/src" "$dir/benches" "$dir/tests"; \
        printf '' >"$dir/src/lib.rs"; \
        printf 'fn main() {}\n' >"$dir/src/main.rs"; \
    done; \
    for bench in crates/breaker/benches/layers.rs crates/shard-router/benches/routing.rs; do \
        printf 'fn main() {}\n' >"$bench"; \
    done; \
    for test in layers servers send_sync; do printf '' >"crates/breaker/tests/$test.rs"; done; \
    cargo build --release --locked -p trestle; \
    rm -rf crates reference-app jepsen

# 2. The sources. Their files are older than the placeholders just built, so touch them: cargo rebuilds what it
#    sees as changed by modification time.
COPY crates crates
COPY reference-app reference-app
COPY jepsen jepsen
RUN find crates reference-app jepsen -type f -exec touch {} + \
    && cargo build --release --locked -p trestle \
    && install -D -m 0755 target/release/trestle /out/trestle

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# A fixed numeric id, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 trestle \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/trestle --no-create-home \
        --shell /usr/sbin/nologin trestle \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/trestle
COPY --from=builder /out/trestle /usr/local/bin/trestle
USER 10001:10001
WORKDIR /var/lib/trestle
# Everything the node writes goes under its --data-dir, on this volume; the root filesystem can be read-only.
VOLUME ["/var/lib/trestle"]
# Client (etcd API), peer (Raft), /livez /readyz /health /metrics; the cache's memcached port and its metrics.
EXPOSE 2379 2380 2381 11211 9150
ENTRYPOINT ["/usr/local/bin/trestle"]
CMD ["--help"]
