"""Render charts/streamrec with the real Helm engine (helm-python-sdk) for the tests."""

from __future__ import annotations

import json
from functools import lru_cache

import yaml

from tests.unit.charts.promql import CHART_DIR

RELEASE = "demo"
NAMESPACE = "recs"
# Kubernetes versions every manifest is validated against (kubernetes-validate, strict).
KUBE_VERSIONS = ("1.36", "1.37")
COMPONENTS = ("ingester", "trainer", "registry", "inference")
GRPC_COMPONENTS = ("registry", "inference")

# Realistic value sets beside the defaults.
VALUE_SETS: dict[str, dict] = {
    "default": {},
    "gpu-trainer": {
        "trainer": {
            "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}},
        },
        "inference": {"gpu": {"enabled": True}},
    },
    "s3-registry-postgres": {
        "registry": {
            "replicaCount": 2,
            "persistence": {"enabled": False},
            "storage": {"type": "s3", "s3": {
                "bucket": "recs-artifacts", "region": "eu-west-1", "endpointUrl": "http://minio.storage:9000",
                "credentialsSecret": {"name": "recs-s3"}}},
            "database": {"existingSecret": "recs-postgres", "key": "url"},
        },
    },
    "postgres-secret": {"registry": {"database": {"existingSecret": "recs-postgres"}}},
    "sasl-ssl-kafka": {
        "kafka": {
            "bootstrapServers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
            "securityProtocol": "SASL_SSL",
            "tls": {"caSecret": {"name": "kafka-ca"}, "clientSecret": {"name": "kafka-client-tls"}},
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "streamrec",
                     "passwordSecret": {"name": "kafka-streamrec", "key": "password"}},
        },
    },
    "strimzi-topics": {"kafka": {"strimzi": {"enabled": True, "clusterName": "prod"}}},
    # Strimzi's cluster CA Secret is <cluster>-cluster-ca-cert; each component is a KafkaUser of its own.
    "strimzi-users": {"kafka": {"securityProtocol": "SSL", "tls": {"caSecret": {"name": "prod-cluster-ca-cert"}},
                                "strimzi": {"enabled": True, "clusterName": "prod", "users": True}}},
    "monitoring": {
        "monitoring": {"serviceMonitors": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                       "prometheusRules": {"enabled": True}},
        "inference": {"metrics": {"serviceMonitor": {"labels": {"team": "recs"}}}},
    },
    "hpa-off": {
        "ingester": {"autoscaling": {"enabled": False}, "replicaCount": 3, "pdb": {"minAvailable": 1}},
        "inference": {"autoscaling": {"enabled": False}, "replicaCount": 4,
                      "networkPolicy": {"allowExternal": False}},
        "registry": {"networkPolicy": {"allowExternal": True}},
        "trainer": {"leaderElection": {"enabled": False}, "persistence": {"enabled": False}},
    },
}


@lru_cache(maxsize=None)
def _render(values_json: str) -> dict[str, str]:
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)


def render_files(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    return _render(json.dumps(values or {}, sort_keys=True))


def render(values: dict | None = None) -> list[dict]:
    """Every manifest the chart renders with ``values``, helm test hooks included."""
    docs = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("metadata", {}).setdefault("annotations", {})
                    doc["_template"] = path  # where it came from, for messages; stripped before validation
                    docs.append(doc)
    return docs


def strip(doc: dict) -> dict:
    out = {k: v for k, v in doc.items() if k != "_template"}
    if not out["metadata"].get("annotations"):
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k != "annotations"}
    return out


def find(docs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (
        component is None or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = find(docs, kind, component)
    assert len(found) == 1, f"expected one {kind} for {component}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(docs: list[dict], component: str) -> dict:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
             and d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(found) == 1, component
    return found[0]


def container(doc: dict) -> dict:
    spec = doc["spec"]["template"]["spec"] if "template" in doc["spec"] else doc["spec"]
    return spec["containers"][0]


def env_map(ctr: dict) -> dict[str, dict]:
    return {e["name"]: e for e in ctr.get("env", [])}


def config_yaml(docs: list[dict], component: str) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", component)["data"]["config.yaml"])


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(name, PodSpec) of every workload and bare Pod."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return out


