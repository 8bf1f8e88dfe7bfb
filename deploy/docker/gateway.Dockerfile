# syntax=docker/dockerfile:1
# Reflex gateway: the stateless HTTP front (`reflex gateway`). No model runs here, so the image
# is python:3.11-slim with the CPU build of torch (the package depends on torch; the gateway
# never imports it, but the CUDA build would add gigabytes for nothing).
#   docker build -f deploy/docker/gateway.Dockerfile -t reflex-gateway:0.1.0 .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY scripts scripts
COPY reflex reflex
COPY services services

# The same install as the Makefile: torch pinned first, then the pinned stub generator, then the
# project. Stubs are generated BEFORE `pip install .` so they are packaged with it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install grpcio-tools==1.85.1 \
 && ./scripts/gen-protos.sh \
 && pip install . \
 && rm -rf /src

# A numeric uid, so Kubernetes' runAsNonRoot can verify it without resolving names.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin reflex
USER 10001
WORKDIR /tmp

EXPOSE 8080
ENV REFLEX_BIND_ADDR=0.0.0.0
ENTRYPOINT ["reflex"]
CMD ["gateway"]
