# syntax=docker/dockerfile:1
# pgwebhooks: docker build -t pgwebhooks:0.1.0 .
# Runs as uid 10001; `run` by default, `migrate` / `endpoint ...` as arguments:
#   docker run --rm -e DATABASE_URL=postgres://... pgwebhooks:0.1.0 migrate

FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: a stub crate with the real manifest
# and lockfile, so this layer is rebuilt only when Cargo.toml or Cargo.lock
# change. (benches/pipeline.rs is declared in Cargo.toml, so it is stubbed too;
# the release build never compiles it.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pipeline.rs \
    && cargo build --release --locked \
    && rm -rf src

# The application: migrations and sql/ are embedded in the binary at compile time.
COPY src ./src
COPY migrations ./migrations
COPY sql ./sql
# COPY keeps the files' original mtimes, which may be older than the stub's
# build: touch them so cargo rebuilds the crate instead of reusing the stub.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && ./target/release/pgwebhooks --version

FROM debian:bookworm-slim
# CA certificates for HTTPS deliveries (rustls reads the system roots).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgwebhooks \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgwebhooks
COPY --from=builder /src/target/release/pgwebhooks /usr/local/bin/pgwebhooks
USER 10001:10001
ENV PGWEBHOOKS_LISTEN=0.0.0.0:8080
EXPOSE 8080
# No HEALTHCHECK: the image has no curl; Kubernetes probes GET /healthz and /readyz.
ENTRYPOINT ["pgwebhooks"]
CMD ["run"]
