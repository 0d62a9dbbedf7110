"""The chart's gRPC security: certificates from Secrets or cert-manager, separate network paths per caller."""

from __future__ import annotations

from tests.unit.charts.chart import RELEASE, config_yaml, container, find, one, render, workload

GRPC_IDENTITIES = ("registry", "inference", "trainer")


def _volumes(doc: dict) -> dict[str, dict]:
    return {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}


def _mounts(doc: dict) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(doc)["volumeMounts"]}


def test_each_grpc_component_mounts_its_own_certificate_and_points_its_config_at_it():
    docs = render()
    for component in GRPC_IDENTITIES:
        doc = workload(docs, component)
        secret = _volumes(doc)["grpc-tls"]["secret"]
        assert secret["secretName"] == f"{RELEASE}-streamrec-{component}-tls"
        assert {i["key"] for i in secret["items"]} == {"ca.crt", "tls.crt", "tls.key"}
        base = _mounts(doc)["grpc-tls"]
        tls = config_yaml(docs, component)["tls"]
        assert (tls["ca_file"], tls["cert_file"], tls["key_file"]) == (
            f"{base}/ca.crt", f"{base}/tls.crt", f"{base}/tls.key")
        assert not tls.get("plaintext")
    assert config_yaml(docs, "inference")["tls"]["client_auth"] == "require"
    assert "tls" not in config_yaml(docs, "ingester")
    assert not find(docs, "Certificate")


def test_cert_manager_issues_one_certificate_per_identity_named_for_the_registry_policy():
    docs = render({"grpcTls": {"certManager": {"enabled": True, "issuerRef": {"name": "streamrec-ca"}}}})
    certs = {c["spec"]["commonName"]: c["spec"] for c in find(docs, "Certificate")}
    assert set(certs) == {"registry", "inference", "trainer", "operator"}
    assert certs["trainer"]["secretName"] == f"{RELEASE}-streamrec-trainer-tls"
    assert f"{RELEASE}-streamrec-registry" in certs["registry"]["dnsNames"]
    assert "dnsNames" not in certs["operator"]
    assert all(c["issuerRef"]["name"] == "streamrec-ca" for c in certs.values())


def test_plaintext_is_an_explicit_setting_and_mounts_nothing():
    docs = render({"grpcTls": {"enabled": False}})
    for component in GRPC_IDENTITIES:
        assert config_yaml(docs, component)["tls"] == {"plaintext": True}
        assert "grpc-tls" not in _volumes(workload(docs, component))


def test_apps_may_use_bearer_tokens_instead_of_certificates():
    docs = render({"grpcTls": {"inferenceClientAuth": "none", "tokensSecret": {"name": "recommend-tokens"}}})
    tls = config_yaml(docs, "inference")["tls"]
    assert tls["client_auth"] == "none"
    doc = workload(docs, "inference")
    assert tls["tokens_file"] == _mounts(doc)["grpc-tokens"] + "/tokens"
    assert _volumes(doc)["grpc-tokens"]["secret"]["secretName"] == "recommend-tokens"


def test_registry_callers_and_recommend_callers_have_separate_labels():
    docs = render({"inference": {"networkPolicy": {"allowExternal": False}}})

    def admitted(component: str) -> list[dict]:
        rule = [r for r in one(docs, "NetworkPolicy", component)["spec"]["ingress"]
                if r["ports"][0]["port"] == "grpc"][0]
        return [p["podSelector"]["matchLabels"] for p in rule["from"]]

    registry, inference = admitted("registry"), admitted("inference")
    assert {f"{RELEASE}-streamrec-registry-client": "true"} in registry
    assert {f"{RELEASE}-streamrec-recommend-client": "true"} in inference
    assert not any(f"{RELEASE}-streamrec-recommend-client" in labels for labels in registry)
    assert not any(f"{RELEASE}-streamrec-registry-client" in labels for labels in inference)


def test_helm_tests_check_health_over_mutual_tls_as_the_operator():
    docs = render()
    tests = [d for d in find(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    registry_test = next(d for d in tests if d["metadata"]["name"].endswith("-registry"))
    script = registry_test["spec"]["containers"][0]["args"][0]
    assert "TlsConfig(ca_file=" in script and "tls=tls" in script
    volumes = {v["name"]: v for v in registry_test["spec"]["volumes"]}
    assert volumes["grpc-tls"]["secret"]["secretName"] == f"{RELEASE}-streamrec-operator-tls"
