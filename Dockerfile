# One image for every process: `laiwang serve <auth|contacts|messaging|zhadui|open_platform|gateway>`.
# Built by `make image` (scripts/build_image.sh), which first builds the wheels of Laiwang and its
# exact pins (constraints.txt) into var/image/wheels: the build needs no package index.
# BASE is a Debian bookworm image with python3 (3.11) and python3-venv; the default is the official
# slim Python image, pinned; scripts/build_image.sh --debootstrap makes one from a debootstrap rootfs.
ARG BASE=python:3.11.14-slim-bookworm

FROM ${BASE} AS build
COPY var/image/wheels /wheels
RUN python3 -m venv /opt/laiwang \
 && /opt/laiwang/bin/pip install --no-cache-dir --no-index --find-links /wheels laiwang \
 && find /opt/laiwang -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/laiwang/bin/python -m compileall -q /opt/laiwang

FROM ${BASE}
# A fixed numeric user: the manifests' runAsUser/runAsGroup (10001) and runAsNonRoot match it.
RUN groupadd --gid 10001 laiwang \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin laiwang
COPY --from=build /opt/laiwang /opt/laiwang
# Nothing is written outside /tmp (an emptyDir in the manifests): read-only root filesystem.
ENV PATH=/opt/laiwang/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_HOST=0.0.0.0 \
    GATEWAY_HOST=0.0.0.0
USER 10001:10001
ENTRYPOINT ["laiwang"]
CMD ["serve", "gateway"]
