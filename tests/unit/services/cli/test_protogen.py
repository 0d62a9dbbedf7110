"""The committed protobuf code must be what `streamrec dev gen-proto` produces now."""

from __future__ import annotations

import filecmp
from pathlib import Path

from services.cli import protogen


def test_generated_code_is_up_to_date(tmp_path):
    protogen.generate(tmp_path)
    fresh = tmp_path / protogen.PACKAGE
    committed = protogen.REPO / protogen.PACKAGE
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed_files = sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh_files == committed_files, "run `streamrec dev gen-proto` and commit the result"
    stale = [str(p) for p in fresh_files if not filecmp.cmp(fresh / p, committed / p, shallow=False)]
    assert not stale, f"stale generated files {stale}: run `streamrec dev gen-proto` and commit"


def test_generated_package_imports_and_round_trips():
    from streamrec_proto.v1 import event_pb2, registry_pb2

    event = event_pb2.Event(event_id="e1", user_id="u", item_id="i", type="click", timestamp_ms=1)
    assert event_pb2.Event.FromString(event.SerializeToString()) == event
    change = registry_pb2.ModelVersionEvent(model_name="m", action="promoted", version=2, aliases={"production": 2})
    assert registry_pb2.ModelVersionEvent.FromString(change.SerializeToString()).aliases["production"] == 2
    assert Path(event_pb2.__file__).with_suffix(".pyi").exists(), "type stubs are generated"
