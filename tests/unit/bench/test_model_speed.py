"""``streamrec bench model``: one JSON line, on the device and ONNX Runtime providers it was asked for."""

from __future__ import annotations

import json

import pytest

from bench import model_speed


def test_bench_model_on_the_cpu_prints_one_line_that_says_where_it_ran(capsys):
    assert model_speed.main(["--device", "cpu", "--providers", "cpu", "--text-encoder", "hashing",
                             "--events", "1500", "--iters", "10"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["device"] == "cpu"
    assert out["providers"] == out["providers_used"] == ["CPUExecutionProvider"]
    assert out["train_events_per_s"] > 0 and out["train_steps"] > 0
    assert out["onnx"]["fp32"]["max_abs_diff_vs_torch"] < 1e-4
    assert out["onnx"]["int8"]["mean_cosine_vs_fp32"] > 0.9


def test_bench_model_refuses_a_device_it_does_not_know():
    with pytest.raises(SystemExit):
        model_speed.main(["--device", "tpu"])
