"""`streamrec bench ingest` end to end on the session broker: every measurement accounts for every event."""

from __future__ import annotations

import json

import pytest

from bench import ingest


def test_bench_ingest_measures_one_and_two_ingester_processes_and_every_copier(kafka_broker, capsys):
    assert ingest.main(["--events", "3000", "--batch", "500", "--processes", "1,2", "--repeat", "2",
                        "--bootstrap-servers", kafka_broker.bootstrap_servers]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert line["bench"] == "ingest" and line["events"] == 3000
    # The run only finishes when the group's committed offsets cover all 3,000 events (and the copiers
    # check what they copied), so each rate below is for the whole input.
    assert set(line["ingester"]) == {"1", "2"}
    for run in line["ingester"].values():
        assert run["events_per_s"] > 0 and run["total_s"] > 0
        # Two interleaved rounds per count; the reported one is the lower middle of them.
        assert len(run["rounds"]) == 2 and run["events_per_s"] == min(run["rounds"])
    assert line["copier_events_per_s"] > 0 and line["kcat_copier_events_per_s"] > 0
    assert line["rdkafka_copier_events_per_s"] > 0 and "librdkafka" in line["client"]
    assert line["ingester_2_processes_over_1"] > 0
    assert line["crc32c_native"] is True  # kafka-python's pure-Python checksum would be the bottleneck


@pytest.mark.parametrize("flag", ["--processes", "--repeat"])
def test_bench_ingest_refuses_a_bad_count(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        ingest.main([flag, "0"])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
