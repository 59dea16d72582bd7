# Orderly's image: `docker build -t orderly .` from a clone.
#
# Two stages: `build` compiles the release binary (dependencies in a layer of their own, rebuilt
# only when a manifest or the lock file changes), `runtime` is distroless (glibc and CA
# certificates, no shell, no package manager) running as the non-root user 65532. The image has
# no HEALTHCHECK: orchestrators probe `/healthz` and `/readyz` themselves.
#
# `runtime` takes the binary from the stage named by BINARY_FROM: `build` by default; CI, which
# cannot fetch a Rust toolchain image, builds the binary on the host and passes
# `--build-arg BINARY_FROM=prebuilt` with a context holding only that binary.
ARG BINARY_FROM=build

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/kit/Cargo.toml crates/kit/Cargo.toml
COPY crates/orderly/Cargo.toml crates/orderly/Cargo.toml
# Placeholder sources, so this layer holds the compiled dependencies alone.
RUN mkdir -p crates/kit/src crates/orderly/src \
    && touch crates/kit/src/lib.rs crates/orderly/src/lib.rs \
    && echo 'fn main() {}' > crates/orderly/src/main.rs \
    && cargo build --release --locked -p orderly \
    && rm -rf crates/*/src
COPY crates crates
# Newer than the placeholders' build, so Cargo rebuilds the workspace's own crates.
RUN touch crates/kit/src/lib.rs crates/orderly/src/lib.rs crates/orderly/src/main.rs \
    && cargo build --release --locked -p orderly \
    && install -D target/release/orderly /out/orderly \
    && install -d -o 65532 -g 65532 /out/data

FROM scratch AS prebuilt
COPY orderly /out/orderly
COPY --chown=65532:65532 data /out/data

# The binary, from the source build or from the host.
# hadolint ignore=DL3006
FROM ${BINARY_FROM} AS binary

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=binary /out/orderly /usr/local/bin/orderly
COPY --from=binary --chown=65532:65532 /out/data /var/lib/orderly
# Listen on every interface of the container; embedded-mode state (the generated signing key,
# the SQLite database) under /var/lib/orderly, a volume in any real deployment.
ENV ORDERLY_LISTEN=0.0.0.0:8080 \
    ORDERLY_WORKER_LISTEN=0.0.0.0:8081 \
    ORDERLY_DATA_DIR=/var/lib/orderly \
    ORDERLY_DATABASE_URL=sqlite:///var/lib/orderly/orderly.db \
    ORDERLY_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/orderly"]
CMD ["serve"]
