# One image for the pdserve operator, router and workers: `pdserve operator`, `pdserve router`,
# `pdserve worker ...`. The runtime extra brings torch; PyPI's Linux wheel carries CUDA, so the
# same image serves on GPU nodes and falls back to CPU elsewhere.
#   docker build -t pdserve:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid so `runAsNonRoot` can be verified by the kubelet without /etc/passwd.
RUN groupadd --system --gid 10001 pdserve \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/pdserve \
    --shell /usr/sbin/nologin pdserve

# A C compiler: CPU workers build their attention and elementwise kernels on first start (into
# /tmp when the home directory is read-only); without it they fall back to slower torch ops.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

# A CPU-only image (no CUDA libraries, ~3 GB smaller):
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
ARG PIP_EXTRA_INDEX_URL

COPY pyproject.toml README.md /tmp/pdserve-src/
COPY operator /tmp/pdserve-src/operator
RUN pip install "/tmp/pdserve-src[runtime]" && rm -rf /tmp/pdserve-src

USER 10001:10001
ENV HOME=/home/pdserve
WORKDIR /home/pdserve

# Worker HTTP, KV transfer, router HTTP / operator health.
EXPOSE 8000 9000 8080
ENTRYPOINT ["pdserve"]
CMD ["--help"]
