# Debian 12 build and runtime: librbd/librados 16.2.15 (Pacific), the oldest
# release we support; librbd's ABI is backward compatible, so the binary runs
# against the same or newer client libraries.
# RUNTIME picks the client libraries the server loads at run time (see the
# README's "Ceph releases"): a cluster whose cephx keys are AES256K (the
# default of Ceph 19.2.6 and 20.2.4 on) needs a newer base than Debian 12's,
# e.g. --build-arg RUNTIME=debian:sid-slim (Tentacle 20.2.4).
ARG RUNTIME=debian:bookworm-slim

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends librbd-dev librados-dev libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM ${RUNTIME}
RUN apt-get update && apt-get install -y --no-install-recommends librbd1 librados2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rbd-addons /usr/local/bin/rbd-addons
ENTRYPOINT ["/usr/local/bin/rbd-addons"]
CMD ["serve", "--endpoint", "unix:///csi/csi-addons.sock"]
