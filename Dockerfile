# Multi-stage build: a full Rust toolchain to compile, a distroless runtime
# (glibc + CA certificates, no shell, non-root) to run. Target size: under 40 MB;
# check with `docker image ls image-service`.
#
#   docker build -t image-service .                 the service alone (the last stage)
#   docker build --target dev -t image-service:dev .  plus the dev stack (compose's `dev`)
#
# The build stage copies exactly what `cargo build` reads: the workspace
# manifests and lock, every member crate (cargo loads all members' manifests
# even to build one), src/, and the files src/routes/docs.rs embeds with
# include_str!. scripts/docker-context-check.sh replays these COPY lines into
# an empty folder and builds there, so a missing path fails CI without Docker.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The dev stack's data folder. Distroless has no shell to mkdir/chown with, so
# it is made here and copied with its owner (nonroot, uid 65532): a new named
# volume mounted on /data takes the owner of the image's /data.
RUN mkdir -p /data && chown 65532:65532 /data
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY crates ./crates
COPY bench/floor ./bench/floor
COPY src ./src
COPY openapi.json ./openapi.json
COPY docs/api.html ./docs/api.html
RUN cargo build --release --locked --bin image-service

# The dev stack binary, built only when the `dev` target is asked for (BuildKit
# skips stages the target does not need), on top of the service's build.
FROM build AS build-dev
RUN cargo build --release --locked --bin devstack

# `docker build --target dev`: the service on local stand-ins of Clerk, Storage
# and the BDD (no account needed). Holds stand-in code and a dev signing key in
# /data: never deploy it.
FROM gcr.io/distroless/cc-debian12:nonroot AS dev
COPY --from=build --chown=65532:65532 /data /data
COPY --from=build /src/target/release/image-service /usr/local/bin/image-service
COPY --from=build-dev /src/target/release/devstack /usr/local/bin/devstack
ENV DEV_DATA_DIR=/data \
    PORT=5002 \
    LOG_FORMAT=pretty
EXPOSE 5002
USER nonroot:nonroot
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/image-service", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/devstack"]

# The production image, and the default target: the service binary only.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /src/target/release/image-service /usr/local/bin/image-service
ENV HOST=0.0.0.0 \
    PORT=5002 \
    LOG_FORMAT=json
EXPOSE 5002
USER nonroot:nonroot
# No curl in a distroless image: the binary checks its own /api/health.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/image-service", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/image-service"]
