# syntax=docker/dockerfile:1
# Reflex gateway: the stateless HTTP front (`reflex gateway`). No model runs here, so the image
# installs the `[gateway]` extra only: no torch, no transformers, no matplotlib (import-linter
# forbids the gateway those imports; tests/gateway/test_without_models.py proves it serves
# without them).
#   docker build -f deploy/docker/gateway.Dockerfile -t reflex-gateway:0.1.0 .

# ---- stage 1: the gRPC stubs, generated with the pinned grpcio-tools (pyproject's [protos]).
# The gateway is a client of the model services, so it needs the stubs; it never needs the
# generator, which stays behind in this stage.
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
    XDG_CACHE_HOME=/tmp/cache

WORKDIR /src
COPY pyproject.toml README.md ./
COPY reflex reflex
COPY services services
COPY commands commands
# The stubs beside the package before `pip install`, so they are packaged with it.
COPY --from=stubs /src/reflex/embedder/v1 reflex/embedder/v1
COPY --from=stubs /src/reflex/verifier/v1 reflex/verifier/v1

RUN pip install '.[gateway]' \
 && rm -rf /src

# A numeric uid, so Kubernetes' runAsNonRoot can verify it without resolving names.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin reflex
USER 10001
WORKDIR /tmp

EXPOSE 8080
ENV REFLEX_BIND_ADDR=0.0.0.0
ENTRYPOINT ["reflex"]
CMD ["gateway"]
