# Builds data-server, api-server and archiver; the NSQ daemons come from nsqio/nsq:v1.3.0, run as a non-root
# user by the first stage (docker-compose.yml builds it with `target: nsq`).
FROM nsqio/nsq:v1.3.0 AS nsq
# nsqd's data directory belongs to the unprivileged user, so that a named volume mounted there does too.
RUN mkdir -p /data && chown 65534:65534 /data
USER 65534:65534

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The commit in --version and *_build_info, when given: --build-arg NSQ_DISCOVERY_COMMIT=$(git rev-parse --short HEAD).
ARG NSQ_DISCOVERY_COMMIT=""
RUN cargo build --release --locked -p data-server -p api-server -p archiver \
 && mkdir /out && cp target/release/data-server target/release/api-server target/release/archiver /out/

FROM debian:bookworm-slim
# curl for the compose health checks; ca-certificates for TLS to nsqd.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# One unprivileged user for every binary. The archive, the heartbeat key and the api-server's saved registry live in
# directories it owns: a new named volume mounted on one takes its owner, so nothing needs root to write there.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin nsq-discovery \
 && mkdir -p /var/lib/archiver /var/lib/nsq-discovery/keys /var/lib/api-server \
 && chown nsq-discovery:nsq-discovery /var/lib/archiver /var/lib/nsq-discovery/keys /var/lib/api-server \
 && chmod 0700 /var/lib/nsq-discovery/keys
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/nsq-discovery/
USER 10001:10001
