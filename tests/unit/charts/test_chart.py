"""charts/streamrec rendered with the real Helm engine: lint, Kubernetes schemas, pod security,
labels and selectors, and the config each service would load."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from tests.unit.charts.chart import (
    CHART_DIR,
    COMPONENTS,
    GRPC_COMPONENTS,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    config_yaml,
    container,
    env_map,
    find,
    one,
    pod_specs,
    render,
    render_files,
    strip,
    workload,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install helm-python-sdk)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
# Custom resources kubernetes-validate has no schema for; checked by shape below.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"),
}
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}

@pytest.fixture(scope="module", autouse=True)
def _cached_kubernetes_schemas():
    """kubernetes-validate re-reads its JSON schemas for every manifest; read each file once."""
    import functools

    import kubernetes_validate.utils as kv_utils

    original = kv_utils.schema_contents
    kv_utils.schema_contents = functools.lru_cache(maxsize=None)(original)
    yield
    kv_utils.schema_contents = original


value_sets = pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))


# -- lint and schemas -------------------------------------------------------------------------------

@value_sets
def test_lint_is_clean(values):
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@value_sets
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(values, kube_version):
    for doc in render(values):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == NAMESPACE and doc["spec"]
            continue
        try:
            kubernetes_validate.validate(strip(doc), kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['_template']} {doc['kind']}/{doc['metadata']['name']} on {kube_version}: {path}: {exc.message}")


def test_schema_rejects_unsafe_or_mistyped_values():
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema({})
        for bad in (
            {"inference": {"securityContext": {"allowPrivilegeEscalation": True}}},
            {"trainer": {"podSecurityContext": {"runAsNonRoot": False}}},
            {"ingester": {"replicaCont": 2}},  # a typo must not be silently ignored
            {"kafka": {"securityProtocol": "SASL_SSL"}},  # SASL without a mechanism
            {"registry": {"storage": {"type": "gcs"}}},
        ):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_trainer_standbys_need_a_shared_checkpoint_volume():
    with pytest.raises(helm.HelmError, match="ReadWriteMany"):
        render({"trainer": {"replicaCount": 2}})
    docs = render({"trainer": {"replicaCount": 2, "persistence": {"accessModes": ["ReadWriteMany"]}}})
    assert workload(docs, "trainer")["spec"]["replicas"] == 2


def test_registry_scale_out_needs_shared_storage():
    with pytest.raises(helm.HelmError, match="PostgreSQL"):
        render({"registry": {"replicaCount": 2}})


# -- pod security -----------------------------------------------------------------------------------

@value_sets
def test_every_pod_meets_the_restricted_pod_security_standard(values):
    specs = pod_specs(render(values))
    assert len(specs) >= 8  # four workloads, four helm test pods
    for name, spec in specs:
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), name
        psc = spec.get("securityContext", {})
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("runAsUser", 1) != 0, name
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{name}: volume {volume}"
        mounts_tmp = False
        for ctr in spec["containers"] + spec.get("initContainers", []):
            sc = ctr.get("securityContext", {})
            where = f"{name}/{ctr['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where
            mounts_tmp |= any(m["mountPath"] == "/tmp" for m in ctr.get("volumeMounts", []))
            assert "limits" in ctr.get("resources", {}) and "memory" in ctr["resources"]["limits"], where
        assert mounts_tmp, f"{name}: a read-only root needs a writable /tmp"
        tmp_volumes = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp_volumes and "emptyDir" in tmp_volumes[0], name


def test_only_the_trainer_gets_an_api_token_and_only_for_leases():
    docs = render()
    for component in COMPONENTS:
        spec = workload(docs, component)["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is (component == "trainer"), component
        assert spec["serviceAccountName"] == f"{RELEASE}-streamrec-{component}"
    for name, spec in pod_specs(docs):
        if name.startswith("Pod/"):
            assert spec["automountServiceAccountToken"] is False
    role = one(docs, "Role", "trainer")
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "watch", "create", "update", "patch"]}]
    binding = one(docs, "RoleBinding", "trainer")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-streamrec-trainer", "namespace": NAMESPACE}]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    assert not find(render(VALUE_SETS["hpa-off"]), "Role")  # leader election off: no RBAC at all


# -- labels, selectors, wiring ----------------------------------------------------------------------

@value_sets
def test_selectors_use_name_instance_component_only_and_match(values):
    docs = render(values)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, doc["_template"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", doc["_template"]
    for component in COMPONENTS:
        wl = workload(docs, component)
        selector = wl["spec"]["selector"]["matchLabels"]
        assert set(selector) == SELECTOR_KEYS and selector["app.kubernetes.io/component"] == component
        pod_labels = wl["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        service = [s for s in find(docs, "Service", component) if s["spec"].get("clusterIP") != "None"][0]
        assert service["spec"]["selector"] == selector
        for kind in ("PodDisruptionBudget", "NetworkPolicy"):
            for doc in find(docs, kind, component):
                key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
                assert doc["spec"][key]["matchLabels"] == selector, (kind, component)
        for sm in find(docs, "ServiceMonitor", component):
            assert sm["spec"]["selector"]["matchLabels"] == selector
            assert selector.items() <= service["metadata"]["labels"].items()
            assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
        for hpa in find(docs, "HorizontalPodAutoscaler", component):
            ref = hpa["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == (wl["kind"], wl["metadata"]["name"])
            assert "replicas" not in wl["spec"]  # the HPA owns the replica count
        if wl["kind"] == "StatefulSet":
            headless = [s for s in find(docs, "Service", component) if s["spec"].get("clusterIP") == "None"]
            assert headless and headless[0]["metadata"]["name"] == wl["spec"]["serviceName"]


@value_sets
def test_probes_point_at_real_health_endpoints(values):
    docs = render(values)
    for component in COMPONENTS:
        ctr = container(workload(docs, component))
        ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert ctr["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        config = config_yaml(docs, component)
        assert ports["metrics"] == config["metrics"]["port"]
        if component in GRPC_COMPONENTS:
            assert ctr["readinessProbe"]["grpc"]["port"] == ports["grpc"] == config["grpc"]["port"]
        else:
            assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_default_ports_follow_the_contract():
    docs = render()
    expected = {"registry": (50051, 9101), "inference": (50052, 9102), "ingester": (None, 9103), "trainer": (None, 9104)}
    for component, (grpc_port, metrics_port) in expected.items():
        ports = {p["name"]: p["containerPort"] for p in container(workload(docs, component))["ports"]}
        assert ports.get("grpc") == grpc_port and ports["metrics"] == metrics_port


@value_sets
def test_config_checksum_annotation_tracks_the_configmap(values):
    docs = render(values)
    files = render_files(values)
    for component in COMPONENTS:
        wl = workload(docs, component)
        checksum = wl["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        text = files[f"streamrec/templates/{component}/configmap.yaml"]
        assert checksum == hashlib.sha256(text.encode()).hexdigest()
        ctr = container(wl)
        assert env_map(ctr)["STREAMREC_CONFIG"]["value"] == "/etc/streamrec/config.yaml"
        volume = [v for v in wl["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"][0]
        assert volume["configMap"]["name"] == one(docs, "ConfigMap", component)["metadata"]["name"]
        assert ctr["args"] == [component, "--config", "/etc/streamrec/config.yaml"]
    changed = render(_merge(values, {"inference": {"config": {"logLevel": "DEBUG"}}}))
    assert (workload(changed, "inference")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            != workload(docs, "inference")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


# -- the config each service loads ------------------------------------------------------------------

_CONFIG_CLASSES = {"ingester": "IngesterConfig", "trainer": "TrainerConfig", "registry": "RegistryConfig",
                   "inference": "InferenceConfig"}


def _config_class(component: str):
    try:
        module = importlib.import_module(f"services.{component}.config")
    except ModuleNotFoundError as exc:
        pytest.skip(f"services/{component}/config.py has not landed yet ({exc})")
    return getattr(module, _CONFIG_CLASSES[component])


def _container_environ(ctr: dict) -> dict[str, str]:
    """The environment the container would see; Secret values are stand-ins."""
    environ = {}
    for item in ctr.get("env", []):
        if "value" in item:
            environ[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            stand_in = "postgresql+psycopg://streamrec:secret@pg:5432/streamrec" if "DATABASE_URL" in item["name"] else "secret"
            environ[item["name"]] = stand_in
    return environ


@value_sets
@pytest.mark.parametrize("component", COMPONENTS)
def test_configmap_is_a_valid_service_config(values, component, tmp_path):
    from services.common.config import load_config

    model = _config_class(component)
    docs = render(values)
    path = tmp_path / "config.yaml"
    path.write_text(one(docs, "ConfigMap", component)["data"]["config.yaml"])
    config = load_config(model, path, environ=_container_environ(container(workload(docs, component))))
    assert config.logging.format == "json"
    assert config.kafka.bootstrap_servers == (values.get("kafka", {}).get("bootstrapServers") or "kafka-kafka-bootstrap:9092")
    if hasattr(config, "grpc"):
        assert config.grpc.host == "0.0.0.0"
    # The service gives up stopping (and logs where it was stuck) before the kubelet's SIGKILL.
    grace = workload(docs, component)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 0 < config.lifecycle.stop_timeout_s < grace
    # Every path the service writes to is a mounted volume (the root filesystem is read-only).
    mounts = [m["mountPath"] for m in container(workload(docs, component)).get("volumeMounts", [])]
    section = getattr(config, component)
    for key in ("checkpoint_dir", "cache_dir", "artifact_root", "staging_dir"):
        value = getattr(section, key, None)
        if value and not (component == "registry" and key == "artifact_root" and section.artifact_store == "s3"):
            assert any(Path(value).is_relative_to(m) for m in mounts), (component, key, value, mounts)
    if component == "registry" and section.database_url.startswith("sqlite"):
        db = section.database_url.removeprefix("sqlite:///")
        assert any(Path(db).is_relative_to(m) for m in mounts)


def test_registry_with_postgres_secret_and_s3():
    docs = render(VALUE_SETS["s3-registry-postgres"])
    sts = workload(docs, "registry")
    env = env_map(container(sts))
    assert env["STREAMREC_REGISTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "recs-postgres", "key": "url"}
    assert env["STREAMREC_REGISTRY_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "recs-s3"
    assert env["STREAMREC_REGISTRY_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "recs-s3"
    config = config_yaml(docs, "registry")["registry"]
    assert "database_url" not in config  # only the Secret carries it
    assert config["artifact_store"] == "s3"
    assert config["s3"] == {"bucket": "recs-artifacts", "prefix": "streamrec/artifacts/", "region": "eu-west-1",
                            "endpoint_url": "http://minio.storage:9000"}
    assert "volumeClaimTemplates" not in sts["spec"] and sts["spec"]["replicas"] == 2
    # Default: SQLite on a PVC.
    default = render()
    assert "sqlite:////var/lib/streamrec/registry/" in config_yaml(default, "registry")["registry"]["database_url"]
    assert workload(default, "registry")["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_kafka_sasl_ssl_reads_the_password_from_the_secret_and_mounts_the_certificates():
    values = VALUE_SETS["sasl-ssl-kafka"]
    docs = render(values)
    # A password cannot be put in values at all: the schema refuses it, so it cannot leak into a manifest.
    inline = {**values, "kafka": {**values["kafka"], "sasl": {**values["kafka"]["sasl"], "password": "hunter2"}}}
    with pytest.raises(Exception, match="password"):
        render(inline)
    # Every password-like variable in the rendered chart comes from a Secret, and no ConfigMap holds one.
    for name, spec in pod_specs(docs):
        for ctr in spec.get("initContainers", []) + spec["containers"]:
            for var in ctr.get("env", []):
                if "PASSWORD" in var["name"] or "SECRET" in var["name"]:
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], f"{name}: {var}"
    for cm in find(docs, "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            assert "password" not in text.lower(), f"ConfigMap {cm['metadata']['name']}/{key} mentions a password"
    for component in COMPONENTS:
        wl = workload(docs, component)
        ctr = container(wl)
        env = env_map(ctr)
        assert env["STREAMREC_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-streamrec", "key": "password"}
        kafka = config_yaml(docs, component)["kafka"]
        assert kafka["security_protocol"] == "SASL_SSL" and kafka["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kafka["sasl_username"] == "streamrec" and "sasl_password" not in kafka
        mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
        volumes = {v["name"]: v for v in wl["spec"]["template"]["spec"]["volumes"]}
        assert kafka["ssl_cafile"] == mounts["kafka-ca"] + "/ca.crt"
        assert volumes["kafka-ca"]["secret"]["secretName"] == "kafka-ca"
        assert kafka["ssl_certfile"] == mounts["kafka-client-tls"] + "/tls.crt"
        assert kafka["ssl_keyfile"] == mounts["kafka-client-tls"] + "/tls.key"
        assert volumes["kafka-client-tls"]["secret"]["secretName"] == "kafka-client-tls"
    plain = render()
    assert "STREAMREC_KAFKA_SASL_PASSWORD" not in env_map(container(workload(plain, "ingester")))


def test_gpu_trainer_requests_gpus_on_gpu_nodes_with_the_cuda_image():
    docs = render(VALUE_SETS["gpu-trainer"])
    sts = workload(docs, "trainer")
    spec = sts["spec"]["template"]["spec"]
    ctr = container(sts)
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert ctr["resources"]["limits"]["memory"] == "32Gi"
    assert ctr["image"].endswith(":0.1.0-gpu")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["runtimeClassName"] == "nvidia"
    trainer = config_yaml(docs, "trainer")["trainer"]
    assert trainer["device"] == "cuda" and trainer["distributed"] == {"enabled": True, "world_size": 2}
    assert container(workload(docs, "inference"))["resources"]["limits"]["nvidia.com/gpu"] == 1
    default = render()
    assert "nvidia.com/gpu" not in container(workload(default, "trainer"))["resources"]["limits"]
    assert container(workload(default, "trainer"))["image"] == "ghcr.io/streamrec/streamrec:0.1.0"


def test_trainer_is_a_statefulset_with_a_checkpoint_volume_and_a_lease():
    docs = render()
    sts = workload(docs, "trainer")
    assert sts["kind"] == "StatefulSet"
    # One claim for all replicas: a standby that takes the Lease resumes from the leader's checkpoint.
    volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "checkpoints")
    claim_name = volume["persistentVolumeClaim"]["claimName"]
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim_name for d in docs)
    trainer = config_yaml(docs, "trainer")["trainer"]
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert trainer["checkpoint_dir"] == mounts["checkpoints"]
    assert trainer["registry_target"] == f"{RELEASE}-streamrec-registry:50051"
    assert trainer["leader_election"]["enabled"] is True
    assert trainer["leader_election"]["namespace"] == NAMESPACE
    assert config_yaml(docs, "inference")["inference"]["registry_target"] == f"{RELEASE}-streamrec-registry:50051"
    assert env_map(container(sts))["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_strimzi_topics():
    docs = render(VALUE_SETS["strimzi-topics"])
    topics = {t["spec"]["topicName"]: t for t in find(docs, "KafkaTopic")}
    assert set(topics) == {f"streamrec.{n}" for n in ("events.raw", "items.raw", "events", "items", "dlq", "model-versions")}
    for name, topic in topics.items():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert topic["spec"]["partitions"] == 3
        compacted = name in ("streamrec.items", "streamrec.items.raw", "streamrec.model-versions")
        assert (topic["spec"]["config"].get("cleanup.policy") == "compact") is compacted, name
    # Strimzi owns the topics, so the services must not create them.
    for component in COMPONENTS:
        assert config_yaml(docs, component)["kafka"]["topics"]["create"] is False
    assert not find(render(), "KafkaTopic")


def _user_rights(user: dict) -> tuple[dict[str, set[str]], dict[str, str]]:
    topics: dict[str, set[str]] = {}
    groups = {}
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        assert res["patternType"] == "literal", acl
        if res["type"] == "topic":
            topics.setdefault(res["name"], set()).update(op.upper() for op in acl["operations"])
        else:
            assert res["type"] == "group" and len(acl["operations"]) == 1, acl
            groups[res["name"]] = acl["operations"][0].upper()
    return topics, groups


def test_strimzi_users_give_each_component_exactly_the_rights_of_the_acl_table():
    from services.common.config import TopicsConfig
    from services.common.kafka_acls import GROUP_RIGHTS, TOPIC_RIGHTS, reader_group

    docs = render(VALUE_SETS["strimzi-users"])
    users = {u["metadata"]["name"]: u for u in find(docs, "KafkaUser")}
    full = f"{RELEASE}-streamrec"
    assert set(users) == {f"{full}-{p}" for p in (*COMPONENTS, "publisher")}
    topics = TopicsConfig()
    for principal, rights in TOPIC_RIGHTS.items():
        user = users[f"{full}-{'publisher' if principal == 'app' else principal}"]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert user["spec"]["authentication"] == {"type": "tls"}
        granted, groups = _user_rights(user)
        assert granted == {topics.name(key): set(ops) for key, ops in rights.items()}, principal
        if principal in COMPONENTS:
            config = config_yaml(docs, principal)
            group = {"ingester": config.get("ingester", {}).get("group_id"),
                     "trainer": config.get("trainer", {}).get("consumer_group"),
                     "inference": reader_group(config["kafka"]["client_id"])}.get(principal)
            assert groups == ({group: GROUP_RIGHTS[principal]} if group else {}), principal
        else:
            assert groups == {}
    # Each component connects with the certificate the User Operator writes into its KafkaUser's Secret.
    for component in COMPONENTS:
        wl = workload(docs, component)
        kafka = config_yaml(docs, component)["kafka"]
        mounts = {m["name"]: m["mountPath"] for m in container(wl)["volumeMounts"]}
        volumes = {v["name"]: v for v in wl["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-client-tls"]["secret"]["secretName"] == f"{full}-{component}"
        assert kafka["ssl_certfile"] == mounts["kafka-client-tls"] + "/user.crt"
        assert kafka["ssl_keyfile"] == mounts["kafka-client-tls"] + "/user.key"
        assert kafka["topics"]["create"] is False
    assert not find(render(), "KafkaUser")


def test_strimzi_scram_users_log_in_as_themselves_with_the_operators_password_secret():
    docs = render({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-512"},
                             "strimzi": {"enabled": True, "users": True}}})
    for user in find(docs, "KafkaUser"):
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
    for component in COMPONENTS:
        name = f"{RELEASE}-streamrec-{component}"
        assert config_yaml(docs, component)["kafka"]["sasl_username"] == name
        env = env_map(container(workload(docs, component)))
        assert env["STREAMREC_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "password"}


@pytest.mark.parametrize("kafka, error", [
    ({"securityProtocol": "SSL", "strimzi": {"users": True}}, "needs kafka.strimzi.enabled"),
    ({"securityProtocol": "PLAINTEXT", "strimzi": {"enabled": True, "users": True}}, "securityProtocol SSL"),
    ({"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN"}, "strimzi": {"enabled": True, "users": True}},
     "SCRAM-SHA-512"),
])
def test_strimzi_users_refuse_settings_they_cannot_honour(kafka, error):
    with pytest.raises(Exception, match=error):
        render({"kafka": kafka})


def test_monitoring_objects_are_behind_flags():
    default = render()
    assert not find(default, "ServiceMonitor") and not find(default, "PrometheusRule")
    dashboards = [c for c in find(default, "ConfigMap") if c["metadata"]["name"].endswith("-dashboards")]
    assert dashboards and dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards[0]["data"]) == {"streamrec-ingest.json", "streamrec-training.json",
                                          "streamrec-registry.json", "streamrec-inference.json"}
    docs = render(VALUE_SETS["monitoring"])
    monitors = find(docs, "ServiceMonitor")
    assert len(monitors) == 4
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)
    assert one(docs, "ServiceMonitor", "inference")["metadata"]["labels"]["team"] == "recs"
    assert len(find(docs, "PrometheusRule")) == 1


def test_hpa_off_sets_replicas_and_network_policy_admits_only_clients():
    docs = render(VALUE_SETS["hpa-off"])
    assert not find(docs, "HorizontalPodAutoscaler")
    assert workload(docs, "ingester")["spec"]["replicas"] == 3
    assert workload(docs, "inference")["spec"]["replicas"] == 4
    assert one(docs, "PodDisruptionBudget", "ingester")["spec"] == {
        "minAvailable": 1, "selector": one(docs, "PodDisruptionBudget", "ingester")["spec"]["selector"]}
    grpc_rule = [r for r in one(docs, "NetworkPolicy", "inference")["spec"]["ingress"]
                 if r["ports"][0]["port"] == "grpc"][0]
    allowed = [p["podSelector"]["matchLabels"] for p in grpc_rule["from"]]
    assert {f"{RELEASE}-streamrec-recommend-client": "true"} in allowed
    assert any(a.get("app.kubernetes.io/component") == "test" for a in allowed)
    registry_grpc = [r for r in one(docs, "NetworkPolicy", "registry")["spec"]["ingress"]
                     if r["ports"][0]["port"] == "grpc"][0]
    assert "from" not in registry_grpc  # allowExternal
    default_registry = [r for r in one(render(), "NetworkPolicy", "registry")["spec"]["ingress"]
                        if r["ports"][0]["port"] == "grpc"][0]
    components = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for p in default_registry["from"]}
    assert {"trainer", "inference", "test"} <= components
    assert len(find(render(), "HorizontalPodAutoscaler")) == 2  # ingester and inference by default


def test_helm_test_pods_check_every_component():
    docs = render()
    tests = [d for d in find(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(tests) == 4
    by_name = {d["metadata"]["name"].rsplit("-", 1)[-1]: container(d) for d in tests}
    for component in GRPC_COMPONENTS:
        script = by_name[component]["args"][0]
        assert "wait_for_serving" in script and f"{RELEASE}-streamrec-{component}:" in script
    for component in ("ingester", "trainer"):
        script = by_name[component]["args"][0]
        assert f"http://{RELEASE}-streamrec-{component}:" in script and "/readyz" in script
    compile_check = [compile(c["args"][0], name, "exec") for name, c in by_name.items()]
    assert len(compile_check) == 4


def test_notes_tell_how_to_call_recommend():
    notes = render_files()["streamrec/templates/NOTES.txt"]
    assert "grpcurl" in notes and "streamrec.v1.Recommender/Recommend" in notes
    assert f"{RELEASE}-streamrec-inference.{NAMESPACE}.svc:50052" in notes


def test_component_value_blocks_are_identical():
    with helm.Chart.load(CHART_DIR) as chart:
        values = chart.values
    common = set(values["ingester"])
    for component in COMPONENTS:
        keys = set(values[component])
        assert common <= keys, (component, common - keys)
        for block in ("probes", "podSecurityContext", "securityContext", "autoscaling", "pdb", "metrics",
                      "serviceAccount", "config", "image"):
            assert set(values[component][block]) == set(values["ingester"][block]), (component, block)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_inference_pods_run_one_server_process_unless_settings_say_otherwise():
    # Without a CPU limit a pod sees every core of its node: the service's own default (one process per
    # core) would load the model once per node core inside the pod's memory limit.
    assert config_yaml(render(), "inference")["inference"]["processes"] == 1
    docs = render({"inference": {"config": {"settings": {"processes": 3}}}})
    assert config_yaml(docs, "inference")["inference"]["processes"] == 3
