# rbd-addons beside csi-rbdplugin: `podman build .` (or `docker build .`).
#
# Built on Debian 12 (librbd 16.2.15, Pacific: the oldest release we support,
# so the binary links against the oldest ABI); run on Debian sid's Ceph 20.2.4
# (Tentacle) client libraries by default: librbd and librados stay backward
# compatible, and only libraries this new read the AES256K cephx keys that
# Squid 19.2.6 and Tentacle clusters create. This one image is the one the
# tests prove on Pacific, Reef and Tentacle clusters (scripts/image.sh).
#
# Other client libraries: --build-arg RUNTIME=debian:trixie-slim --build-arg
# LIBRBD=18.2 (Reef 18.2.7, a stable Debian; no AES256K keys), or
# RUNTIME=debian:bookworm-slim LIBRBD=16.2 (Pacific). LIBRBD is the version
# the label promises; the build fails if the runtime carries another.
ARG RUNTIME=debian:sid-slim

FROM rust:1-bookworm AS build
# libclang: the Ceph bindings are generated from librbd's headers at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends librbd-dev librados-dev libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The dist profile (Cargo.toml): stripped, size-optimised, link-time optimised.
RUN cargo build --locked --profile dist

FROM ${RUNTIME}
ARG RUNTIME
ARG LIBRBD=20.2
ARG VERSION=0.1.0
# Where the image was built from (scripts/image.sh passes the clone's remote and commit).
ARG SOURCE=""
ARG REVISION=""
# No docs, manuals or translations: a read-only container never shows them.
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
        'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/lintian/*' \
        >/etc/dpkg/dpkg.cfg.d/01-rbd-addons-slim \
    && apt-get update \
    && apt-get install -y --no-install-recommends librbd1 librados2 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && carried=$(dpkg-query -W -f='${Version}' librbd1) \
    && case "$carried" in "$LIBRBD".*) ;; \
        *) echo "this runtime carries librbd1 $carried, not $LIBRBD: set --build-arg LIBRBD" >&2; exit 1 ;; \
       esac \
    && echo "rbd-addons:x:65532:65532:rbd-addons:/nonexistent:/usr/sbin/nologin" >>/etc/passwd \
    && echo "rbd-addons:x:65532:" >>/etc/group
COPY --from=build /src/target/dist/rbd-addons /usr/local/bin/rbd-addons
LABEL org.opencontainers.image.title="rbd-addons" \
      org.opencontainers.image.description="CSI-Addons server for Ceph RBD, beside csi-rbdplugin" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${RUNTIME}" \
      io.rbd-addons.librbd="${LIBRBD}"
# Runs as a user of its own; needs nothing writable but the socket directory
# (readOnlyRootFilesystem: true).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rbd-addons"]
CMD ["serve", "--endpoint", "unix:///csi/csi-addons.sock"]
