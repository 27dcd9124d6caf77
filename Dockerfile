# syntax=docker/dockerfile:1
# Sluice container image: a Rust build stage, then distroless.
#
#   docker build -t sluice:dev .
#
# The binary links glibc, libm and libgcc_s dynamically (ring's C/asm is
# compiled in), so the runtime is distroless/cc (glibc + libgcc, no shell,
# no package manager) on the same Debian release as the build stage.
# It runs as the image's `nonroot` user (65532), which the Deployment
# (deploy/base/deployment.yaml) also enforces.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build needs (see .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY crates crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice --bin sluice \
 && install -D -m 0755 target/release/sluice /out/sluice \
 && /out/sluice --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Kubernetes ingress and Gateway API data plane" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 65532:65532
# Gateway listener ports 80/443 are bound to 8080/8443 by the Deployment's
# --bind flags (no root, no NET_BIND_SERVICE); 9901 is the admin API.
EXPOSE 8080 8443 9901
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--kubernetes"]
