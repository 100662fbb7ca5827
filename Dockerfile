# syntax=docker/dockerfile:1
# Two images from one build:
#   docker build -t serin:0.1.0 .                                          # serin controller (deploy/istio)
#   docker build --target loadtester -t serin-loadtester:0.1.0 .           # serin loadtester (deploy/loadtester)
#
# Why a glibc build on distroless/cc and not a static musl binary: serin's TLS is rustls with the
# aws-lc-rs provider, whose C and assembly (aws-lc-sys) needs a musl C toolchain to build for
# x86_64-unknown-linux-musl, and the glibc build is the one the project compiles and tests every
# day (on Debian bookworm, as this builder). The binary needs only libc, libm and libgcc_s, which
# distroless/cc-debian12 provides and nothing else: no shell, no package manager, and the user
# 65532 that deploy/*/deployment.yaml runs as.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/serin-core crates/serin-core
COPY crates/serin-api crates/serin-api
COPY crates/serin crates/serin
# The sandbox is a workspace member that the product never builds: cargo reads its manifest to
# load the workspace, so it gets the manifest and empty sources, nothing of its code.
COPY crates/serin-sandbox/Cargo.toml crates/serin-sandbox/Cargo.toml
RUN mkdir -p crates/serin-sandbox/src \
    && touch crates/serin-sandbox/src/lib.rs crates/serin-sandbox/src/main.rs
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p serin --bin serin \
    && cp target/release/serin /serin

# The load tester runs webhook commands with `sh -c` / `bash -c`, as Flagger's does, so it needs
# a shell and the tools Flagger's tutorials call: hey (load), curl and jq (acceptance tests).
FROM docker.io/library/debian:bookworm-slim AS loadtester
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates curl hey jq \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /serin /usr/local/bin/serin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/serin"]
CMD ["loadtester", "--port", "8080"]

# The controller: the default target (last stage).
FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /serin /usr/local/bin/serin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/serin"]
CMD ["controller"]
