# Stampede in a container: a multi-stage build, a small Debian runtime, a non-root user, the
# data in a volume. See "Running it in production" in README.md.
#
#   docker build -t stampede .
#   docker run -d --name stampede -p 61613:61613 -p 15674:15674 -p 15672:15672 \
#     -v stampede-data:/var/lib/stampede \
#     -v "$PWD/deploy/stampede.toml:/etc/stampede/stampede.toml:ro" stampede
#
# The listeners are on 0.0.0.0 inside the container, and the broker refuses to start on a
# non-loopback address without users (or --allow-anonymous): the configuration mounted at
# /etc/stampede/stampede.toml must define [users.<name>] (hashes from `docker run --rm -i
# stampede passwd`).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stampede-broker \
 && strip target/release/stampede

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stampede \
 && useradd --system --uid 10001 --gid stampede --home-dir /var/lib/stampede --shell /usr/sbin/nologin stampede \
 && mkdir -p /var/lib/stampede /etc/stampede \
 && chown stampede:stampede /var/lib/stampede
COPY --from=build /src/target/release/stampede /usr/local/bin/stampede
ENV STAMPEDE_CONFIG=/etc/stampede/stampede.toml \
    STAMPEDE_DATA_DIR=/var/lib/stampede \
    STAMPEDE_STOMP_ADDR=0.0.0.0:61613 \
    STAMPEDE_WS_ADDR=0.0.0.0:15674 \
    STAMPEDE_HTTP_ADDR=0.0.0.0:15672 \
    NO_COLOR=1
USER stampede:stampede
VOLUME ["/var/lib/stampede"]
# STOMP, STOMP over TLS, WebSocket, secure WebSocket, management HTTP and HTTPS.
EXPOSE 61613 61614 15674 15673 15672 15671
# SIGTERM drains (shutdown_drain_ms, then shutdown_timeout_ms): give `docker stop` more than
# 10 s, e.g. `docker stop -t 15`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stampede"]
