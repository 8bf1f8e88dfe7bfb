"""Render the Helm chart with Helm's own engine (helm-python-sdk wraps Helm v4's Go SDK) and parse
the manifests. A module of its own (not conftest) so tests can import it by a unique name."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the test extra")

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "k8s" / "helm" / "reflex"
RELEASE = "cache"
NAMESPACE = "reflex-test"

# Secret values no rendered ConfigMap (or any other non-Secret manifest) may contain.
SENTINELS = {
    "upstream": "sk-SENTINEL-upstream-7f3a9c",
    "qdrant": "SENTINEL-qdrant-key-41be",
    "redis_password": "SENTINEL-redis-pw-93d1",
    "redis_url_password": "SENTINEL-external-redis-pw-c0de",
    "admin": "SENTINEL-admin-token-5e11",
}
SECRET_VALUES = {
    "secrets": {
        "upstreamApiKey": SENTINELS["upstream"],
        "qdrantApiKey": SENTINELS["qdrant"],
        "adminToken": SENTINELS["admin"],
    },
    "redis": {"password": SENTINELS["redis_password"]},
}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "examples" / f"{name}.yaml").read_text())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The value sets the issue names, each with the sentinel secrets merged in (an existing Secret
# ignores them, which is itself checked: they must then appear nowhere).
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu": example("gpu"),
    "cpu-only": example("cpu-only"),
    "external-stores": example("external-stores"),
    "external-literal": {
        "redis": {"enabled": False},
        "externalRedis": {"url": f"rediss://:{SENTINELS['redis_url_password']}@redis.example:6380/0"},
        "qdrant": {"enabled": False},
        "externalQdrant": {"url": "https://qdrant.example:6333"},
    },
    "hpa-off": {"gateway": {"autoscaling": {"enabled": False}, "replicas": 3}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}},
    "replicas": {
        "gateway": {"autoscaling": {"minReplicas": 4, "maxReplicas": 12}},
        "embedder": {"replicas": 3},
        "verifier": {"replicas": 2},
    },
    "model-volume": {
        "embedder": {
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            "modelPath": "/models/all-MiniLM-L6-v2",
        },
        "verifier": {
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            "modelPath": "/models/reflex-verifier",
        },
    },
}
VALUE_SETS = {name: deep_merge(SECRET_VALUES, values) for name, values in VALUE_SETS.items()}


@dataclass
class Rendered:
    values: dict[str, Any]  # what the user passed (the chart's defaults fill the rest)
    merged: dict[str, Any]  # values as Helm coalesced them
    docs: list[dict[str, Any]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # "Kind/name" -> the manifest's YAML text

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
        return matches[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")]


def render(values: dict[str, Any]) -> Rendered:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)
        merged = chart.merge_values(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out = Rendered(values=values, merged=merged)
    for path, text in manifests.items():
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for chunk in text.split("\n---"):
            doc = yaml.safe_load(chunk)
            if doc:
                out.docs.append(doc)
                out.texts[f"{doc['kind']}/{doc['metadata']['name']}"] = chunk
    return out


def fullname(component: str) -> str:
    # RELEASE does not contain the chart name, so the prefix is "<release>-reflex".
    return f"{RELEASE}-reflex-{component}"
