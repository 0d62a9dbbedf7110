"""`streamrec bench ingest` end to end on the session broker: every measurement accounts for every event."""

from __future__ import annotations

import json

from bench import ingest


def test_bench_ingest_measures_one_and_two_ingester_processes_and_both_copiers(kafka_broker, capsys):
    assert ingest.main(["--events", "3000", "--batch", "500", "--processes", "1,2",
                        "--bootstrap-servers", kafka_broker.bootstrap_servers]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert line["bench"] == "ingest" and line["events"] == 3000
    # The run only finishes when the group's committed offsets cover all 3,000 events (and the copiers
    # check what they copied), so each rate below is for the whole input.
    assert set(line["ingester"]) == {"1", "2"}
    for run in line["ingester"].values():
        assert run["events_per_s"] > 0 and run["total_s"] > 0
    assert line["copier_events_per_s"] > 0 and line["kcat_copier_events_per_s"] > 0
    assert line["ingester_2_processes_over_1"] > 0
    assert line["crc32c_native"] is True  # kafka-python's pure-Python checksum would be the bottleneck


def test_bench_ingest_refuses_a_bad_process_count(capsys):
    try:
        ingest.main(["--processes", "0"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--processes 0 was accepted")
    assert "--processes" in capsys.readouterr().err
