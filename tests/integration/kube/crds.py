"""The CustomResourceDefinitions the chart's custom resources need, from the projects' own sources.

ServiceMonitor and PrometheusRule come from the prometheus-operator module, Certificate from the
cert-manager module, both fetched through the Go module proxy (``go mod download``, cached in the
module cache). Strimzi publishes no Go module, and its Maven artifacts carry no CRD files, so
KafkaTopic and KafkaUser get stand-in definitions that accept any spec: the object is admitted and stored,
but its schema is not checked here (the chart tests check its shape).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from services.devcluster.build import go_command

PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
CERT_MANAGER = ("github.com/cert-manager/cert-manager", "v1.21.2")

OFFICIAL = {
    "ServiceMonitor": (PROMETHEUS_OPERATOR, "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"),
    "PrometheusRule": (PROMETHEUS_OPERATOR, "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"),
    "Certificate": (CERT_MANAGER, "deploy/crds/cert-manager.io_certificates.yaml"),
}

def _strimzi_stand_in(kind: str, short: str) -> dict:
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kafka.strimzi.io"},
        "spec": {
            "group": "kafka.strimzi.io",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short]},
            "scope": "Namespaced",
            "versions": [{
                "name": name, "served": True, "storage": name == "v1beta2",
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            } for name in ("v1", "v1beta2")],
        },
    }


STRIMZI_STAND_INS = [_strimzi_stand_in("KafkaTopic", "kt"), _strimzi_stand_in("KafkaUser", "ku")]


def _module_dir(module: str, version: str, workdir: Path) -> Path:
    env = dict(os.environ, GOFLAGS="-mod=mod")
    out = subprocess.run([go_command(), "mod", "download", "-json", f"{module}@{version}"], cwd=workdir,
                         env=env, capture_output=True, text=True, check=True).stdout
    return Path(json.loads(out)["Dir"])


def crd_documents(workdir: Path) -> list[dict]:
    """Every CRD the chart's optional custom resources need (official where published)."""
    docs = []
    for (module, version), path in OFFICIAL.values():
        text = (_module_dir(module, version, workdir) / path).read_text()
        docs += [d for d in yaml.safe_load_all(text) if d]
    return [*docs, *STRIMZI_STAND_INS]
