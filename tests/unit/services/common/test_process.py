"""How many cores a service may use: CPU affinity capped by a cgroup quota, as a Kubernetes CPU limit sets it."""

from __future__ import annotations

import os

import pytest

from services.common.process import available_cpus
from services.inference.config import InferenceConfig

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path, text: str):
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def test_without_a_cgroup_quota_every_core_of_the_affinity_counts(tmp_path):
    assert available_cpus(tmp_path) == AFFINITY
    assert available_cpus(cgroup_v2(tmp_path, "max 100000\n")) == AFFINITY


def test_a_cgroup_v2_quota_caps_the_cores_rounded_up(tmp_path):
    assert available_cpus(cgroup_v2(tmp_path, "50000 100000\n")) == 1  # 500m: one process, not zero
    assert available_cpus(cgroup_v2(tmp_path, "100000 100000\n")) == 1
    assert available_cpus(cgroup_v2(tmp_path, f"{100000 * AFFINITY + 1} 100000\n")) == AFFINITY  # never above affinity


def test_a_cgroup_v1_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == min(2, AFFINITY)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert available_cpus(tmp_path) == AFFINITY


@pytest.mark.parametrize("garbage", ["", "max", "abc def", "100000 0", "-5 100000", "\x00\xff"])
def test_unreadable_quota_files_fall_back_to_the_affinity(tmp_path, garbage):
    assert 1 <= available_cpus(cgroup_v2(tmp_path, garbage)) <= AFFINITY


def _config(port: int, processes: int | None = None) -> InferenceConfig:
    inference = {"artifact_source": "/nonexistent"} | ({"processes": processes} if processes is not None else {})
    return InferenceConfig.model_validate({"grpc": {"port": port}, "inference": inference})


def test_inference_runs_one_process_per_core_by_default_on_a_fixed_port():
    assert _config(50052).worker_processes() == available_cpus()
    assert _config(50052, processes=3).worker_processes() == 3


def test_an_ephemeral_port_runs_one_process_since_processes_cannot_share_it():
    assert _config(0).worker_processes() == 1
    with pytest.raises(ValueError, match="inference.processes > 1 needs a fixed grpc.port"):
        _config(0, processes=2)


@pytest.fixture
def unfrozen():
    import gc

    yield
    gc.unfreeze()  # the rest of the test process collects as usual


def test_freezing_the_heap_leaves_what_is_alive_out_of_the_collectors_passes(unfrozen):
    import gc

    from services.common.process import freeze_heap

    state = [[i] for i in range(5000)]  # start-up state: tracked containers that live on
    assert all(gc.is_tracked(x) for x in state[:10])
    frozen = freeze_heap()
    walked = {id(o) for o in gc.get_objects()}
    assert frozen >= len(state)
    assert not any(id(x) in walked for x in state), "a full pass would still walk the start-up state"
    later = [[1], [2]]
    assert {id(x) for x in later} <= {id(o) for o in gc.get_objects()}, "what comes later is collected as usual"


def test_a_frozen_object_is_still_freed_when_its_last_reference_goes(unfrozen):
    import weakref

    from services.common.process import freeze_heap

    class State:
        pass

    state = State()
    gone = weakref.ref(state)
    freeze_heap()
    del state
    assert gone() is None


def test_the_collector_is_paused_only_inside_the_block_and_left_as_it_was():
    import gc

    from services.common.process import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()
    with pytest.raises(KeyError):
        with collector_paused():
            raise KeyError("boom")
    assert gc.isenabled()
