"""``streamrec publish`` and EventPublisher: files and stdin to events.raw / items.raw."""

from __future__ import annotations

import io
import json
import sys

import pytest

from services.cli import publish
from services.cli.publish import EventPublisher, read_records
from streamrec_proto.v1 import event_pb2


def test_csv_rows_become_typed_records():
    text = "event_id,user_id,item_id,type,value,timestamp_ms,context.page\ne1,u1,i1,rating,4.5,1700000000000,home\ne2,u2,i2,view,,,\n"
    rows = [doc for _, doc, _ in read_records(io.StringIO(text), "csv")]
    assert rows[0] == {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "rating", "value": 4.5,
                       "timestamp_ms": 1_700_000_000_000, "context": {"page": "home"}}
    assert rows[1] == {"event_id": "e2", "user_id": "u2", "item_id": "i2", "type": "view"}
    items = "item_id,title,categories,available,attributes.color\nx,Hat,a|b,false,red\n"
    assert next(read_records(io.StringIO(items), "csv"))[1] == {
        "item_id": "x", "title": "Hat", "categories": ["a", "b"], "available": False, "attributes": {"color": "red"}}


def test_bad_jsonl_lines_are_reported_with_their_line_number():
    out = list(read_records(io.StringIO('{"a": 1}\n\nnot json\n[1]\n'), "jsonl"))
    assert [(n, e.split(":")[0]) for n, _, e in out if e] == [(3, "not JSON"), (4, "not a JSON object")]


def _read(kafka_config, key: str) -> list:
    from tests.integration.topics import read_topic

    return read_topic(kafka_config, kafka_config.topics.name(key))


def _argv(kafka_config, *rest) -> list[str]:
    return ["--plaintext", "--bootstrap-servers", kafka_config.bootstrap_servers, *rest]


@pytest.mark.integration
def test_publish_jsonl_from_a_file_and_csv_from_stdin(kafka_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_KAFKA_TOPICS_PREFIX", kafka_config.topics.prefix)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({"event_id": f"e{i}", "user_id": f"u{i % 2}", "item_id": "i", "type": "view"}) + "\n"
                            for i in range(5)) + "oops\n")
    assert publish.main(_argv(kafka_config, str(path))) == 1  # one line skipped: not a silent success
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["published"], summary["skipped"]) == (5, 1) and "events.jsonl:6: skipped" in err
    records = _read(kafka_config, "events_raw")
    assert sorted(r.key for r in records) == [b"u0", b"u0", b"u0", b"u1", b"u1"]
    assert all(dict(r.headers)["content-type"] == b"application/json" for r in records)

    monkeypatch.setattr(sys, "stdin", io.StringIO("item_id,title,categories\nx1,Hat,a|b\n"))
    assert publish.main(_argv(kafka_config, "--kind", "items", "--format", "csv", "-")) == 0
    (item,) = _read(kafka_config, "items_raw")
    assert item.key == b"x1" and json.loads(item.value) == {"item_id": "x1", "title": "Hat", "categories": ["a", "b"]}


@pytest.mark.integration
def test_event_publisher_sends_dicts_as_json_and_messages_as_protobuf(kafka_config):
    with EventPublisher(kafka_config) as pub:
        pub.publish_event({"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view"}).get(10)
        pub.publish_event(event_pb2.Event(event_id="e2", user_id="u2", item_id="i1", type="view")).get(10)
    records = {r.key: r for r in _read(kafka_config, "events_raw")}
    assert dict(records[b"u1"].headers)["content-type"] == b"application/json"
    assert dict(records[b"u2"].headers)["content-type"] == b"application/x-protobuf"
    assert event_pb2.Event.FromString(records[b"u2"].value).event_id == "e2"


def _args(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("--config", "--bootstrap-servers", "--tls-dir"):
        parser.add_argument(name)
    parser.add_argument("--identity", default="app")
    parser.add_argument("--plaintext", action="store_true")
    return parser.parse_args(list(argv))


def test_by_default_it_publishes_as_the_app_over_the_local_stacks_mutual_tls(tmp_path):
    from services.common.errors import ConfigError
    from services.stack.credentials import ensure_credentials

    ensure_credentials(tmp_path, identities=("app",))
    kafka = publish._kafka_config(_args("--tls-dir", str(tmp_path)), environ={})
    assert (kafka.bootstrap_servers, kafka.security_protocol) == ("127.0.0.1:9093", "SSL")
    assert (kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile) == tuple(
        str(tmp_path / name) for name in ("ca.crt", "app.crt", "app.key"))
    assert not kafka.topics.create  # an app may not create topics; the stack made them
    moved = publish._kafka_config(_args("--tls-dir", str(tmp_path), "--bootstrap-servers", "h:19093"), environ={})
    assert (moved.bootstrap_servers, moved.security_protocol) == ("h:19093", "SSL")
    # Only when asked for: the administrator's listener, no TLS.
    admin = publish._kafka_config(_args("--plaintext"), environ={})
    assert (admin.bootstrap_servers, admin.security_protocol) == ("127.0.0.1:9092", "PLAINTEXT")
    # Settings that name the protocol are the user's own: used as they are.
    own = publish._kafka_config(_args(), environ={"STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                                  "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": "kafka:9094"})
    assert (own.bootstrap_servers, own.security_protocol) == ("kafka:9094", "SASL_SSL")
    # No certificate: a clear error, not a silent fall back to the unauthenticated listener.
    with pytest.raises(ConfigError, match="no credentials for 'inference'.*--tls-dir"):
        publish._kafka_config(_args("--tls-dir", str(tmp_path), "--identity", "inference"), environ={})
    assert publish.main(["--tls-dir", str(tmp_path / "nowhere"), "-"]) == 2
