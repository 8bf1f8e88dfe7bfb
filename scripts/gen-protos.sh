#!/usr/bin/env sh
# The one command that generates the gRPC stubs, used by the Makefile, CI and every Dockerfile.
# grpcio-tools is pinned in pyproject.toml, so the generated code always matches the runtime.
# Output lands beside the package (reflex/<service>/v1/*_pb2*.py) and is git-ignored.
set -eu
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" -m grpc_tools.protoc -Iprotos \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    protos/reflex/embedder/v1/embedder.proto \
    protos/reflex/verifier/v1/verifier.proto
