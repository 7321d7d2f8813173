# One image for the pdserve operator, router and workers: `pdserve operator`, `pdserve router`,
# `pdserve worker ...`. The runtime extra brings torch; PyPI's Linux wheel carries CUDA, so the
# same image serves on GPU nodes and on CPU nodes.
#   docker build -t pdserve:0.1.0 .
# The TPU variant (the operator gives it to TPU pods: the worker image's tag + "-tpu") holds the
# torch / torch_xla pair and libtpu of the `tpu` extra instead:
#   docker build --build-arg EXTRA=tpu -t pdserve:0.1.0-tpu .
# Any Debian-based image with Python 3.11 (python3, python3-venv) can be the base: `make image`
# (e2e/image.py) builds on a Debian bookworm made by mmdebstrap, with no registry.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The virtual environment works on both bases: Debian's own python3 is externally managed
# (PEP 668) and refuses installs into the system site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/pdserve \
    PATH=/opt/pdserve/bin:$PATH

# A fixed numeric uid/gid so `runAsNonRoot` can be verified by the kubelet without /etc/passwd.
RUN groupadd --system --gid 10001 pdserve \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/pdserve \
    --shell /usr/sbin/nologin pdserve

# A C compiler: CPU workers build their attention and elementwise kernels on first start (into
# /tmp when the home directory is read-only); without it they fall back to slower torch ops.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

# CA bundles for a build behind a TLS-inspecting proxy (pip reads PIP_CERT, uv SSL_CERT_FILE);
# unset, both trust their own bundled roots.
ARG PIP_CERT
ARG SSL_CERT_FILE
# uv installs the packages: it is fast on few cores, and it keeps every wheel it downloads in its
# cache, where pip keeps only what HTTP cache headers allow (some proxies strip them).
ARG UV_VERSION=0.13.9
RUN python3 -m venv /opt/pdserve \
 && pip install --no-cache-dir "uv==${UV_VERSION}"

# The uv cache is a build cache mount: never part of the image, kept between builds, so a rebuild
# does not download torch and its CUDA libraries (several GB) again. A build may instead point
# UV_CACHE_DIR at a host cache it binds (e2e/image.py binds the one `make venv` filled), which
# saves the first download too. Copies, not links: the cache is on another filesystem.
ARG UV_CACHE_DIR=/root/.cache/uv
ARG UV_LINK_MODE=copy
# Bytecode compiled at build time: workers and the operator run with a read-only root.
ARG UV_COMPILE_BYTECODE=1
# A CPU-only image (no CUDA libraries nor triton, ~4.5 GB smaller; torch from
# download.pytorch.org):
#   docker build --build-arg UV_TORCH_BACKEND=cpu .
ARG UV_TORCH_BACKEND
ARG EXTRA=runtime

# The dependencies first, from pyproject.toml alone: a change to the source then reinstalls only
# pdserve, on top of the cached multi-GB dependency layer.
COPY pyproject.toml /tmp/pdserve-src/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install -r /tmp/pdserve-src/pyproject.toml --extra "${EXTRA}"
COPY README.md /tmp/pdserve-src/
COPY operator /tmp/pdserve-src/operator
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install "/tmp/pdserve-src[${EXTRA}]" && rm -rf /tmp/pdserve-src /tmp/uv-*.lock

USER 10001:10001
ENV HOME=/home/pdserve
WORKDIR /home/pdserve

# Worker HTTP, KV transfer, router HTTP / operator health.
EXPOSE 8000 9000 8080
ENTRYPOINT ["pdserve"]
CMD ["--help"]
