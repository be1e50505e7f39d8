# Builds data-server, api-server and archiver; the NSQ daemons come from nsqio/nsq:v1.3.0.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p data-server -p api-server -p archiver \
 && mkdir /out && cp target/release/data-server target/release/api-server target/release/archiver /out/

FROM debian:bookworm-slim
# curl for the compose health checks; ca-certificates for TLS to nsqd.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/nsq-discovery/
USER nobody
