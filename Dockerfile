# syntax=docker/dockerfile:1
#
# The lb-agent image for manifests/deploy/: build with
#   docker build -t registry.example.com/lb-agent:0.1.0 .
#
# Stage 1 builds the agent with its embedded eBPF object (the same toolchain as `cargo xtask
# setup` installs: rust-src for `-Z build-std=core`, bpf-linker 0.10.0 which links against the
# LLVM inside the Rust toolchain). Stage 2 is distroless: glibc and libgcc, no shell, no
# package manager.

ARG RUST_VERSION=1.95.0
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG RUST_VERSION
# The eBPF build (aya-build) runs cargo through rustup with this toolchain name; it is the one
# the image ships.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION}
RUN rustup component add rust-src --toolchain "${RUST_VERSION}" \
    && cargo install bpf-linker@0.10.0 --locked
WORKDIR /src
# Only what the build reads, so the context sent is small and no host `target/` leaks in.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY lb-agent lb-agent
COPY lb-ebpf lb-ebpf
COPY tests tests
COPY xtask xtask
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package lb-agent --bin lb-agent \
    && install -D target/release/lb-agent /out/lb-agent

# Runs as root: Kubernetes grants the added capabilities (BPF, NET_ADMIN, PERFMON) to root
# only, unless ambient capabilities are set up; the DaemonSet drops every other one.
FROM gcr.io/distroless/cc-debian12 AS agent
COPY --from=build /out/lb-agent /usr/local/bin/lb-agent
ENTRYPOINT ["/usr/local/bin/lb-agent"]
CMD ["run"]
