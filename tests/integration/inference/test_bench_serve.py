"""``streamrec bench serve`` end to end on a small catalog: real servers in child processes sharing a port,
real gRPC calls with mutual TLS, fresh events, the recall check and a model swap."""

from __future__ import annotations

import json

import pytest

from bench import serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_serve_spreads_calls_over_two_server_processes_and_swaps_both(capsys):
    assert serve.main(["--items", "3000", "--concurrency", "16", "--duration", "1", "--processes", "2",
                       "--recall-users", "20", "--tls", "on", "--repeat", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # One connection per caller: the kernel spreads connections (not calls) over the processes, 16 of them
    # all landing on one of two processes has odds of 2 ** -15.
    assert out["server_processes"] == 2 and out["connections"] == 16
    rec, ping = out["recommend"], out["ping"]
    assert rec["errors"] == 0 and ping["errors"] == 0 and rec["requests"] > 0 and ping["requests"] > 0
    assert len(rec["calls_per_process"]) == 2 and min(rec["calls_per_process"]) > 0, "both processes answered"
    assert 0 < rec["cache_hit_ratio"] < 1, "fresh events invalidate some answers, repeated users hit others"
    assert out["recall_at_k_vs_exact"] == 1.0  # 3,000 items: exact search
    swap = out["model_swap"]
    assert swap["errors"] == 0 and swap["announce_to_serving_s"] is not None
    assert swap["announce_to_serving_s"] >= swap["build_index_warm_up_s"], "timed until every process swapped"
    # Two rounds of Ping then Recommend: each method reports its lower-median round, and the QPS ratio is the
    # lower median of the two rounds' own ratios.
    assert out["repeat"] == 2 and len(rec["qps_rounds"]) == 2 and len(ping["qps_rounds"]) == 2
    assert rec["qps"] == min(rec["qps_rounds"]) and ping["qps"] == min(ping["qps_rounds"])
    ratios = [round(r / p, 3) for r, p in zip(rec["qps_rounds"], ping["qps_rounds"])]
    assert out["paired_rounds"]["recommend_qps_over_ping"] == ratios
    assert out["recommend_qps_over_ping"] == min(ratios)
    assert rec["client_cpu_ms_per_request"] > 0 and ping["client_cpu_ms_per_request"] > 0


def test_bench_serve_refuses_zero_rounds(capsys):
    with pytest.raises(SystemExit):
        serve.main(["--repeat", "0"])
    assert "--repeat" in capsys.readouterr().err
