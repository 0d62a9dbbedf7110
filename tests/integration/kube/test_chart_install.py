"""The chart installed into a real API server: every object admitted into a namespace that enforces
the restricted Pod Security Standard, custom resources validated by their CRDs, then upgrade and
uninstall. No kubelets run, so pods never start; each pod template is also created as a Pod (server
dry run), which is where Pod Security admission enforces.
"""

from __future__ import annotations

import copy
import uuid

import pytest

from tests.integration.kube.crds import crd_documents
from tests.unit.charts.chart import VALUE_SETS, pod_specs, render
from tests.unit.charts.promql import CHART_DIR
from tests.waiting import wait_for

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk)")

# The first test of a session may build the control plane (minutes on 2 cores) in its fixture.
pytestmark = [pytest.mark.timeout(1200), pytest.mark.kube, pytest.mark.integration]

CERT_MANAGER_VALUES = {"grpcTls": {"certManager": {"enabled": True, "issuerRef": {"name": "streamrec-ca"}}}}
INSTALL_SETS = {**VALUE_SETS, "cert-manager": CERT_MANAGER_VALUES}


@pytest.fixture(scope="module")
def crds(kube_cluster, kube_api, tmp_path_factory):
    """The CRDs installed and Established before any release uses them."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube_api)
    names = []
    for doc in crd_documents(tmp_path_factory.mktemp("crds")):
        ext.create_custom_resource_definition(doc)
        names.append(doc["metadata"]["name"])

    def established(name: str) -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    for name in names:
        wait_for(lambda: established(name), timeout_s=120, what=f"CRD {name} Established", interval_s=0.5)
    # What the NVIDIA GPU operator installs on a GPU cluster; the gpu-trainer values name it.
    client.NodeV1Api(kube_api).create_runtime_class({"metadata": {"name": "nvidia"}, "handler": "nvidia"})
    return names


def _restricted_namespace(kube_api) -> str:
    from kubernetes import client

    name = f"recs-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
              "pod-security.kubernetes.io/warn": "restricted"}
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    # What the controller-manager (not running here) creates in every namespace; bare Pods use it.
    core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    return name


def _helm(kube_cluster, namespace: str):
    return helm.Config(kubeconfig_path=str(kube_cluster.kubeconfig), namespace=namespace)


def _objects_in(kube_api, namespace: str, manifest_docs: list[dict]) -> list[str]:
    """The rendered objects that the API server does not have (kind/name); one being deleted counts
    as gone (no controller-manager runs to remove a PersistentVolumeClaim's protection finalizer)."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    dyn = DynamicClient(kube_api)
    missing = []
    for doc in manifest_docs:
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        try:
            found = resource.get(name=doc["metadata"]["name"], namespace=namespace if resource.namespaced else None)
            if found.metadata.deletionTimestamp:
                missing.append(f"{doc['kind']}/{doc['metadata']['name']} (deleting)")
        except NotFoundError:
            missing.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return missing


def _admit_pod_templates(kube_api, namespace: str, docs: list[dict]) -> None:
    """Each pod template as a Pod, server-side dry run: Pod Security admission enforces on Pods only."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    claims = {f"StatefulSet/{d['metadata']['name']}": d["spec"].get("volumeClaimTemplates", [])
              for d in docs if d["kind"] == "StatefulSet"}
    for name, template in pod_specs(docs):
        spec = copy.deepcopy(template)
        # What the StatefulSet controller adds: one PVC volume per claim template.
        spec.setdefault("volumes", []).extend(
            {"name": c["metadata"]["name"], "persistentVolumeClaim": {"claimName": f"{c['metadata']['name']}-0"}}
            for c in claims.get(name, []))
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"admit-{uuid.uuid4().hex[:8]}", "namespace": namespace}, "spec": spec}
        try:
            core.create_namespaced_pod(namespace, pod, dry_run="All")
        except client.ApiException as exc:
            pytest.fail(f"{name}: pod template rejected in a restricted namespace: {exc.body}")


def _release_docs(release: dict) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


@pytest.mark.parametrize("values", list(INSTALL_SETS.values()), ids=list(INSTALL_SETS))
def test_install_upgrade_uninstall_in_a_restricted_namespace(kube_cluster, kube_api, crds, values):
    namespace = _restricted_namespace(kube_api)
    release_name = "demo"
    with _helm(kube_cluster, namespace) as cfg, helm.Chart.load(CHART_DIR) as chart:
        installed = cfg.install(chart, release_name, values, namespace=namespace, timeout=300)
        assert installed["status"] == "deployed", installed["status"]
        docs = _release_docs(installed)
        assert docs, "the release has no objects"
        assert not _objects_in(kube_api, namespace, docs)
        # Hooks (helm test pods) are not part of the manifest; their pod specs are admitted here too.
        _admit_pod_templates(kube_api, namespace, render(values))

        upgraded_values = copy.deepcopy(values)
        upgraded_values.setdefault("inference", {})["podAnnotations"] = {"streamrec.test/upgrade": "2"}
        upgraded = cfg.upgrade(chart, release_name, upgraded_values, namespace=namespace, timeout=300)
        assert (upgraded["status"], upgraded["revision"]) == ("deployed", 2)
        assert not _objects_in(kube_api, namespace, _release_docs(upgraded))

        cfg.uninstall(release_name, timeout=300)
        # Objects the chart marks `helm.sh/resource-policy: keep` (data) outlive the release by design.
        kept = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"]
        removed = [d for d in docs if d not in kept]

        def remaining() -> list[str]:
            gone = set(_objects_in(kube_api, namespace, removed))
            return [f"{d['kind']}/{d['metadata']['name']}" for d in removed
                    if not any(g.startswith(f"{d['kind']}/{d['metadata']['name']}") for g in gone)]

        wait_for(lambda: not remaining(), timeout_s=120, what="every object of the release deleted",
                 interval_s=0.5)
        assert not _objects_in(kube_api, namespace, kept), "an object marked keep was deleted"
        assert not cfg.list(), "the release is still recorded after uninstall"
