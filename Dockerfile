# One image with the three binaries: coordinator, ws-node and presence.
# Build: docker build -t presence .
FROM rust:1-bookworm AS build
WORKDIR /src
# rdkafka-sys builds librdkafka and (for Kafka TLS/SCRAM) OpenSSL from source:
# make, perl and a C compiler come with the image; zlib's headers do not.
RUN apt-get update && apt-get install -y --no-install-recommends zlib1g-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && cp target/release/coordinator target/release/ws-node target/release/presence /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 presence
COPY --from=build /usr/local/bin/coordinator /usr/local/bin/ws-node /usr/local/bin/presence /usr/local/bin/
USER presence
# A ws-node serves 9000, a coordinator 8080 (public) and 8081 (admin).
EXPOSE 8080 8081 9000
CMD ["coordinator"]
