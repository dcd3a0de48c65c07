# Multi-stage build: a full Rust toolchain to compile, a distroless runtime
# (glibc + CA certificates, no shell, non-root) to run. Target size: under 40 MB;
# check with `docker image ls image-service`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin image-service

FROM gcr.io/distroless/cc-debian12:nonroot
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
