"""`streamrec models` against a real registry: readable output, exit codes, errors in words."""

from __future__ import annotations

import json

import pytest

from services.cli import models as models_cli
from tests.pki import local_ca, registry_client
from tests.unit.services.registry.builders import make_artifact_dir, paired_evidence, start_registry


@pytest.fixture
def target(tmp_path):
    service = start_registry(tmp_path / "registry")
    with registry_client(service.target) as client:
        client.register("recommender", make_artifact_dir(tmp_path / "a1", hr=0.30, seed=1), trainer_id="trainer-0")
        client.register("recommender", make_artifact_dir(tmp_path / "a2", hr=0.10, seed=2,
                                                         gate=paired_evidence(1, 0.10, 0.30, n=640)),
                        trainer_id="trainer-0")
    yield service.target
    service.stop(0)


def run(capsys, *argv):
    # The operator's credentials, where `streamrec up` would have put them.
    code = models_cli.main([*argv, "--tls-dir", str(local_ca().directory)])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_promote_rollback_archive(target, capsys):
    code, out, _ = run(capsys, "list", "--registry", target)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["VERSION", "STATE", "ALIASES", "GATE"]
    assert lines[1].split()[:4] == ["1", "active", "production", "promoted"]
    assert lines[2].split()[:4] == ["2", "active", "candidate", "rejected"]
    # The evidence the gate decided on: both scores on the same events, n and the bound.
    assert "hr@10 0.1000 vs v1 0.3000 n=640 diff=[-0.2200,-0.1800]" in lines[2]
    assert lines[1].split()[4] == "-"  # the first version had nothing to be compared with
    assert "gate." not in out and "hr@10=0.1000" in lines[2]  # METRICS leaves the gate's numbers to EVIDENCE

    code, out, _ = run(capsys, "show", "candidate", "--registry", target)
    assert code == 0 and "version:      2" in out and "gate:         rejected - worse beyond noise: hr@10" in out
    assert "evidence:     hr@10 0.1000 vs v1 0.3000 n=640" in out
    assert "t.events[0] -> 12" in out

    code, out, _ = run(capsys, "promote", "2", "--reason", "looks fine", "--registry", target)
    assert code == 0 and out.startswith("production -> recommender v2")
    code, out, _ = run(capsys, "rollback", "--registry", target)
    assert code == 0 and out.startswith("production rolled back -> recommender v1")

    code, out, _ = run(capsys, "show", "production", "--json", "--registry", target)
    assert json.loads(out)["version"] == "1"

    code, _, err = run(capsys, "archive", "1", "--registry", target)
    assert code == 1 and "failed_precondition" in err and "production" in err
    code, _, _ = run(capsys, "promote", "1", "--alias", "candidate", "--registry", target)
    code, out, _ = run(capsys, "archive", "2", "--registry", target)
    assert code == 0 and out.startswith("archived recommender v2") and "state:        archived" in out
    code, out, _ = run(capsys, "list", "--registry", target)
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1"]
    code, out, _ = run(capsys, "list", "--all", "--registry", target)
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["1", "active"], ["2", "archived"]]


def test_unknown_version_and_unreachable_registry_fail_with_a_message(target, capsys):
    code, _, err = run(capsys, "show", "9", "--registry", target)
    assert code == 1 and "not_found" in err and "version 9" in err
    code, _, err = run(capsys, "list", "--registry", "127.0.0.1:9", "--timeout", "1")
    assert code == 1 and "unreachable" in err
