# Debian 12 build and runtime: librbd/librados 16.2.15 (Pacific), the oldest
# release we support; librbd's ABI is backward compatible, so the binary runs
# against the same or newer client libraries.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends librbd-dev librados-dev libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends librbd1 librados2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rbd-addons /usr/local/bin/rbd-addons
ENTRYPOINT ["/usr/local/bin/rbd-addons"]
CMD ["serve", "--endpoint", "unix:///csi/csi-addons.sock"]
