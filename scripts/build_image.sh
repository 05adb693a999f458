#!/usr/bin/env bash
# make image: build the one Laiwang image with podman (or docker).
#   scripts/build_image.sh                 FROM the pinned official Python base (needs a registry)
#   scripts/build_image.sh --debootstrap   FROM a Debian bookworm rootfs made here with debootstrap and
#                                          imported with `podman import`: no registry at all
# IMAGE (default laiwang/laiwang:0.1.0, the tag the manifests use) names the result.
# ISOLATION=chroot (podman/buildah) runs the RUN steps in a chroot instead of an OCI runtime: for
# hosts where crun cannot start containers (deploy/k8s/README.md, "Building the image").
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-laiwang/laiwang:0.1.0}
ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$ENGINE" ] || { echo "make image: needs podman or docker" >&2; exit 2; }

rm -rf var/image/wheels && mkdir -p var/image/wheels
.venv/bin/python -m pip wheel --quiet --wheel-dir var/image/wheels -c constraints.txt .

build_args=()
if [ "${1:-}" = "--debootstrap" ]; then
    base=localhost/laiwang-base:bookworm
    if ! "$ENGINE" image exists "$base" 2>/dev/null; then
        rootfs=var/image/rootfs
        if [ ! -x "$rootfs/usr/bin/python3" ]; then
            rm -rf "$rootfs"
            debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs"
        fi
        tar -C "$rootfs" -c . | "$ENGINE" import - "$base"
    fi
    build_args=(--build-arg "BASE=$base")
fi
[ -n "${ISOLATION:-}" ] && build_args+=(--isolation "$ISOLATION")
"$ENGINE" build "${build_args[@]}" --tag "$IMAGE" --file Dockerfile .
echo "built $IMAGE"
