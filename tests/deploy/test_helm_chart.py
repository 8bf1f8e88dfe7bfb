"""The Helm chart, rendered by Helm's own engine for every value set the issue names, linted,
validated against the Kubernetes schemas of two versions, and checked for the properties that
matter in a cluster: GPU pinning only where asked, probes, headless Services the gateway points
at, no secret in a ConfigMap, no service links, checksums and a locked-down securityContext."""

from __future__ import annotations

import base64
import math
from typing import Any

import kubernetes_validate
import pytest

from tests.support.settings import all_setting_names, parse_settings

from chart_render import (
    CHART_DIR,
    NAMESPACE,
    SENTINELS,
    VALUE_SETS,
    Rendered,
    deep_merge,
    fullname,
    helm,
    render,
)

# The oldest version the chart supports with GA native gRPC probes is 1.27; these two are the
# oldest and newest releases most managed clusters run.
K8S_VERSIONS = ("1.30.0", "1.33.0")
MODEL_SERVICES = ("embedder", "verifier")
# Kinds of the Prometheus Operator's CRDs, which kubernetes-validate has no schema for.
CUSTOM_RESOURCES = {"ServiceMonitor"}
COMPONENTS = ("gateway", *MODEL_SERVICES)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def component_of(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def deployment(r: Rendered, component: str) -> dict[str, Any]:
    return r.get("Deployment", fullname(component))


def container(r: Rendered, component: str) -> dict[str, Any]:
    (c,) = pod_spec(deployment(r, component))["containers"]
    return c


def gateway_config(r: Rendered) -> dict[str, str]:
    return r.get("ConfigMap", fullname("gateway"))["data"]


# ------------------------------------------------------------------ Helm's own checks


@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str, kube_version: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[name], strict=True, kube_version=f"v{kube_version}")
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; the only info Helm gives is "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
def test_every_manifest_validates_against_kubernetes_schemas(value_set: Rendered, kube_version: str) -> None:
    assert value_set.docs, "nothing rendered"
    for doc in value_set.docs:
        if doc["kind"] in CUSTOM_RESOURCES:
            continue  # not in the Kubernetes schemas; checked field by field in test_service_monitors
        # strict: unknown fields are errors too (a typo in a template would otherwise pass).
        kubernetes_validate.validate(doc, kube_version, strict=True)


def test_schema_rejects_bad_values() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        for bad in (
            {"gateway": {"config": {"BIND_ADDR": "0.0.0.0"}}},  # not a REFLEX_* name
            {"embedder": {"gpu": {"enabled": "yes"}}},
            {"redis": {"password": "has space@"}},  # would break the redis:// URL
            {"upstream": {"url": "api.openai.com"}},
        ):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"enabled": False}}, "externalRedis.url"),
        ({"qdrant": {"enabled": False}}, "externalQdrant.url"),
        ({"gateway": {"config": {"REFLEX_REDIS_URL": "redis://:pw@x:6379/0"}}}, "is a secret"),
        ({"embedder": {"config": {"REFLEX_UPSTREAM_API_KEY": "sk-x"}}}, "is a secret"),
        ({"gateway": {"config": {"REFLEX_ADMIN_TOKEN": "t"}}}, "is a secret"),
    ],
)
def test_required_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# ------------------------------------------------------------------ workloads and scheduling


def test_gpu_requests_and_node_pinning_only_where_configured(value_set: Rendered) -> None:
    gpu_name = value_set.merged["gpu"]["resourceName"]
    for workload in value_set.workloads():
        component = component_of(workload)
        spec = pod_spec(workload)
        values = value_set.merged.get(component, {})
        wants_gpu = component in MODEL_SERVICES and values["gpu"]["enabled"]
        for c in spec["containers"]:
            limits = c.get("resources", {}).get("limits", {})
            requests = c.get("resources", {}).get("requests", {})
            if wants_gpu:
                assert limits[gpu_name] == requests[gpu_name] == values["gpu"]["count"], workload["metadata"]["name"]
            else:
                assert gpu_name not in limits and gpu_name not in requests, workload["metadata"]["name"]
            device = None
            if component in MODEL_SERVICES:
                device = value_set.get("ConfigMap", fullname(component))["data"]["REFLEX_DEVICE"]
                assert device == ("cuda" if wants_gpu else "cpu")
        assert spec.get("nodeSelector", {}) == values.get("nodeSelector", {})
        assert spec.get("tolerations", []) == values.get("tolerations", [])
        assert spec.get("affinity", {}) == values.get("affinity", {})
        assert spec.get("runtimeClassName", "") == values.get("runtimeClassName", "")


def test_gpu_profile_pins_model_services_to_gpu_nodes(rendered: dict[str, Rendered]) -> None:
    # Guards the test above against passing vacuously: the GPU profile really asks for GPUs.
    r = rendered["gpu"]
    for component in MODEL_SERVICES:
        spec = pod_spec(deployment(r, component))
        assert spec["nodeSelector"] == {"node-pool": "gpu"}
        assert spec["runtimeClassName"] == "nvidia"
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(deployment(r, "gateway"))
    defaults = rendered["defaults"]
    assert all("nvidia.com/gpu" not in str(w) for w in defaults.workloads())


def test_gpu_resource_name_is_configurable() -> None:
    r = render({"gpu": {"resourceName": "amd.com/gpu"}, "embedder": {"gpu": {"enabled": True, "count": 2}}})
    limits = container(r, "embedder")["resources"]["limits"]
    assert limits["amd.com/gpu"] == 2 and "nvidia.com/gpu" not in limits
    assert "amd.com/gpu" not in container(r, "verifier")["resources"].get("limits", {})


def test_probes(value_set: Rendered) -> None:
    gw = container(value_set, "gateway")
    assert gw["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gw["startupProbe"]["httpGet"]["path"] == "/healthz"
    for component in MODEL_SERVICES:
        c = container(value_set, component)
        (grpc_port,) = [p["containerPort"] for p in c["ports"] if p["name"] == "grpc"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["grpc"]["port"] == grpc_port, (component, probe)
            assert "httpGet" not in c[probe] and "exec" not in c[probe]
        startup = c["startupProbe"]
        # Room for a cold model load (and CUDA initialisation): at least five minutes.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_termination_grace_exceeds_prestop_plus_drain(value_set: Rendered) -> None:
    for component in COMPONENTS:
        spec = pod_spec(deployment(value_set, component))
        values = value_set.merged[component]
        sleep_cmd = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep_cmd == ["sleep", str(values["preStopSleepSeconds"])]
        assert spec["terminationGracePeriodSeconds"] > values["preStopSleepSeconds"] + math.ceil(values["drainSeconds"])
    drain = value_set.get("ConfigMap", fullname("gateway"))["data"]["REFLEX_SHUTDOWN_GRACE_SECS"]
    assert float(drain) == value_set.merged["gateway"]["drainSeconds"]


def test_hpa_switch_and_replicas(value_set: Rendered) -> None:
    gw = value_set.merged["gateway"]
    hpas = value_set.kind("HorizontalPodAutoscaler")
    if gw["autoscaling"]["enabled"]:
        (hpa,) = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == fullname("gateway")
        assert hpa["spec"]["minReplicas"] == gw["autoscaling"]["minReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # The HPA owns the count: a replicas field would fight it on every upgrade.
        assert "replicas" not in deployment(value_set, "gateway")["spec"]
        assert "cpu" in container(value_set, "gateway")["resources"]["requests"]
    else:
        assert hpas == []
        assert deployment(value_set, "gateway")["spec"]["replicas"] == gw["replicas"]
    for component in MODEL_SERVICES:
        assert deployment(value_set, component)["spec"]["replicas"] == value_set.merged[component]["replicas"]


def test_replicas_above_one(rendered: dict[str, Rendered]) -> None:
    r = rendered["replicas"]
    assert deployment(r, "embedder")["spec"]["replicas"] == 3
    assert deployment(r, "verifier")["spec"]["replicas"] == 2
    assert r.get("HorizontalPodAutoscaler", fullname("gateway"))["spec"]["minReplicas"] == 4
    assert rendered["hpa-off"].get("Deployment", fullname("gateway"))["spec"]["replicas"] == 3


def test_pod_disruption_budgets_select_their_pods(value_set: Rendered) -> None:
    for component in COMPONENTS:
        pdb = value_set.get("PodDisruptionBudget", fullname(component))
        pod_labels = deployment(value_set, component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# ------------------------------------------------------------------ services and wiring


def test_headless_services_and_the_gateway_targets_them(value_set: Rendered) -> None:
    config = gateway_config(value_set)
    for component in MODEL_SERVICES:
        svc = value_set.get("Service", fullname(component))
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"].get("publishNotReadyAddresses", False) is False
        pod_labels = deployment(value_set, component)["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        port = value_set.merged[component]["port"]
        assert svc["spec"]["ports"][0]["port"] == port
        host = f"{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        assert config[f"REFLEX_{component.upper()}_URL"] == f"dns:///{host}:{port}"
        model_config = value_set.get("ConfigMap", fullname(component))["data"]
        assert model_config["REFLEX_GRPC_PORT"] == str(port)
        # A probe from the kubelet and calls from gateways come from outside the pod.
        assert model_config["REFLEX_GRPC_BIND_ADDR"] == "0.0.0.0"
    assert value_set.get("Service", fullname("gateway"))["spec"].get("clusterIP") != "None"
    assert config["REFLEX_BIND_ADDR"] == "0.0.0.0"


def test_stores_in_chart_or_external(value_set: Rendered) -> None:
    merged = value_set.merged
    config = gateway_config(value_set)
    gw_env = {e["name"]: e for e in container(value_set, "gateway")["env"]}
    statefulsets = {component_of(s): s for s in value_set.kind("StatefulSet")}
    redis_ref = gw_env["REFLEX_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    if merged["redis"]["enabled"]:
        assert "redis" in statefulsets
        secret = value_set.get("Secret", redis_ref["name"])
        url = base64.b64decode(secret["data"][redis_ref["key"]]).decode()
        svc = value_set.get("Service", fullname("redis"))
        assert url == f"redis://:{SENTINELS['redis_password']}@{svc['metadata']['name']}:6379/0"
    else:
        assert "redis" not in statefulsets
        assert redis_ref.get("optional", False) is False  # no silent fall-back to a per-pod L1
    if merged["qdrant"]["enabled"]:
        qdrant = statefulsets["qdrant"]
        (claim,) = qdrant["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in pod_spec(qdrant)["containers"][0]["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == "/qdrant/storage"
        svc = value_set.get("Service", fullname("qdrant"))
        assert config["REFLEX_QDRANT_URL"] == f"http://{svc['metadata']['name']}:6333"
    else:
        assert "qdrant" not in statefulsets
        assert config["REFLEX_QDRANT_URL"] == merged["externalQdrant"]["url"]


def test_model_volume_is_mounted_read_only(rendered: dict[str, Rendered]) -> None:
    r = rendered["model-volume"]
    for component, setting in (("embedder", "REFLEX_MODEL_PATH"), ("verifier", "REFLEX_RERANKER_PATH")):
        spec = pod_spec(deployment(r, component))
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "model"]
        assert mount["readOnly"] is True and mount["mountPath"] == "/models"
        (volume,) = [v for v in spec["volumes"] if v["name"] == "model"]
        assert volume["persistentVolumeClaim"]["claimName"] == "models"
        path = r.get("ConfigMap", fullname(component))["data"][setting]
        assert path == r.values[component]["modelPath"] and path.startswith(mount["mountPath"] + "/")
    defaults = rendered["defaults"]
    for component in MODEL_SERVICES:
        data = defaults.get("ConfigMap", fullname(component))["data"]
        assert "REFLEX_MODEL_PATH" not in data and "REFLEX_RERANKER_PATH" not in data


def test_every_setting_the_chart_sets_is_a_real_setting(value_set: Rendered) -> None:
    fields = all_setting_names()
    names: set[str] = set()
    for cm in value_set.kind("ConfigMap"):
        names |= set(cm["data"])
    for workload in value_set.workloads():
        for c in pod_spec(workload)["containers"]:
            names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("REFLEX_")}
    assert names, "no settings rendered"
    assert names - fields == set()


def test_rendered_settings_parse(value_set: Rendered) -> None:
    # Every value the chart puts in a ConfigMap must be one the service accepts at start-up.
    for cm in value_set.kind("ConfigMap"):
        parse_settings(cm["data"])  # raises SettingsError on a bad type or range


# ------------------------------------------------------------------ secrets


def test_no_secret_in_any_config_map_or_pod_spec(value_set: Rendered) -> None:
    for key, text in value_set.texts.items():
        if key.startswith("Secret/"):
            continue
        for label, sentinel in SENTINELS.items():
            assert sentinel not in text, f"{label} secret leaked into {key}"
    for cm in value_set.kind("ConfigMap"):
        for name in ("REFLEX_UPSTREAM_API_KEY", "REFLEX_QDRANT_API_KEY", "REFLEX_REDIS_URL", "REFLEX_ADMIN_TOKEN"):
            assert name not in cm["data"]
    secret_env = {"REFLEX_UPSTREAM_API_KEY", "REFLEX_QDRANT_API_KEY", "REFLEX_REDIS_URL", "REFLEX_ADMIN_TOKEN"}
    gw_env = {e["name"]: e for e in container(value_set, "gateway")["env"]}
    assert secret_env <= gw_env.keys()
    for name in secret_env:
        assert "secretKeyRef" in gw_env[name]["valueFrom"] and "value" not in gw_env[name]


def test_secrets_land_in_the_secret_or_come_from_the_existing_one(value_set: Rendered) -> None:
    # The counterpart of the leak test: the sentinels really were rendered, into Secrets only.
    gw_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(value_set, "gateway")["env"]}
    existing = value_set.merged["secrets"]["existingSecret"]
    if existing:
        assert gw_env["REFLEX_UPSTREAM_API_KEY"]["name"] == existing
        assert not any(d["metadata"]["name"] == existing for d in value_set.kind("Secret"))
        # The literal values are ignored when an existing Secret is named.
        for secret in value_set.kind("Secret"):
            for encoded in secret["data"].values():
                assert SENTINELS["upstream"] not in base64.b64decode(encoded).decode()
        return
    ref = gw_env["REFLEX_UPSTREAM_API_KEY"]
    secret = value_set.get("Secret", ref["name"])
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == SENTINELS["upstream"]
    qref = gw_env["REFLEX_QDRANT_API_KEY"]
    assert base64.b64decode(secret["data"][qref["key"]]).decode() == SENTINELS["qdrant"]
    aref = gw_env["REFLEX_ADMIN_TOKEN"]
    assert aref["name"] == secret["metadata"]["name"] and aref["optional"] is True  # absent: admin API off
    assert base64.b64decode(secret["data"][aref["key"]]).decode() == SENTINELS["admin"]
    if not value_set.merged["redis"]["enabled"]:
        rref = gw_env["REFLEX_REDIS_URL"]
        assert SENTINELS["redis_url_password"] in base64.b64decode(value_set.get("Secret", rref["name"])["data"][rref["key"]]).decode()


# ------------------------------------------------------------------ conventions


def test_service_links_off_and_no_token_everywhere(value_set: Rendered) -> None:
    workloads = value_set.workloads()
    assert {component_of(w) for w in workloads} >= set(COMPONENTS)
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["enableServiceLinks"] is False, workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, workload["metadata"]["name"]


def test_security_context_everywhere(value_set: Rendered) -> None:
    for workload in value_set.workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
            # A read-only root needs somewhere to write: /tmp (or the store's data dir) is a volume.
            assert {m["mountPath"] for m in c["volumeMounts"]} & {"/tmp", "/data"}


def test_standard_labels_on_every_resource(value_set: Rendered) -> None:
    for doc in value_set.docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "component", "version", "managed-by", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], doc["metadata"]["name"], key)


def test_checksum_annotations_follow_each_components_config(rendered: dict[str, Rendered]) -> None:
    base = rendered["defaults"]

    def checksums(r: Rendered) -> dict[str, str]:
        return {
            c: deployment(r, c)["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for c in COMPONENTS
        }

    before = checksums(base)
    assert all(len(v) == 64 for v in before.values())
    changed = checksums(render(deep_merge(base.values, {"gateway": {"config": {"REFLEX_L2_TOP_K": "8"}}})))
    assert changed["gateway"] != before["gateway"]
    assert changed["embedder"] == before["embedder"] and changed["verifier"] == before["verifier"]
    changed = checksums(render(deep_merge(base.values, {"embedder": {"torchThreads": 8}})))
    assert changed["embedder"] != before["embedder"] and changed["gateway"] == before["gateway"]
    rotated = render(deep_merge(base.values, {"secrets": {"upstreamApiKey": "sk-rotated"}}))
    key = "checksum/secret"
    gw_before = deployment(base, "gateway")["spec"]["template"]["metadata"]["annotations"][key]
    assert deployment(rotated, "gateway")["spec"]["template"]["metadata"]["annotations"][key] != gw_before


# ------------------------------------------------------------------ monitoring


def test_service_monitors_only_when_enabled_and_they_select_real_ports(value_set: Rendered) -> None:
    monitors = value_set.kind("ServiceMonitor")
    if not value_set.merged["serviceMonitor"]["enabled"]:
        assert monitors == []
        return
    by_component = {component_of(m): m for m in monitors}
    expected = {"gateway"} | {c for c in MODEL_SERVICES if value_set.merged[c]["metricsPort"]}
    assert set(by_component) == expected
    for component, monitor in by_component.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
        assert monitor["metadata"]["labels"]["release"] == value_set.merged["serviceMonitor"]["labels"]["release"]
        service = value_set.get("Service", fullname(component))
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
        port = {p["name"]: p for p in service["spec"]["ports"]}[endpoint["port"]]
        # the Service port leads to the container port that serves /metrics
        (c,) = pod_spec(deployment(value_set, component))["containers"]
        assert port["targetPort"] in {p["name"] for p in c["ports"]}
        if component != "gateway":
            assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == value_set.merged[component]["metricsPort"]
            config = value_set.get("ConfigMap", fullname(component))["data"]
            assert config["REFLEX_METRICS_PORT"] == str(value_set.merged[component]["metricsPort"])


def test_no_admin_token_means_no_key_in_the_secret() -> None:
    r = render({})
    secret = r.get("Secret", fullname("").rstrip("-"))
    assert "admin-token" not in (secret.get("data") or {})
    env = {e["name"]: e for e in container(r, "gateway")["env"]}
    assert env["REFLEX_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
