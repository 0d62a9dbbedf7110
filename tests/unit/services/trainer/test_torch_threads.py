"""How many intra-op threads the trainer gives torch, alone and inside the local stack."""

import pytest
import torch

from services.common.process import available_cpus
from services.stack.stack import LocalStack, StackOptions
from services.trainer.backend import LocalBackend, torch_threads
from services.trainer.config import TrainerConfig


def _config(threads: int) -> TrainerConfig:
    return TrainerConfig.model_validate({"trainer": {"torch_threads": threads}})


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_configured_count_is_what_torch_runs_with(restore_threads):
    LocalBackend(_config(1), torch.device("cpu"))
    assert torch.get_num_threads() == 1


def test_zero_means_the_cores_this_process_may_use_unless_omp_num_threads_says(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(_config(0)) == available_cpus()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads(_config(0)) is None  # torch read it at start-up
    assert torch_threads(_config(2)) == 2


def test_an_impossible_count_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="torch_threads"):
        _config(-1)


def test_the_local_stack_leaves_half_the_cores_to_its_other_services(tmp_path):
    config = LocalStack(StackOptions(work_dir=tmp_path)).services["trainer"].config
    assert config["trainer"]["torch_threads"] == max(1, available_cpus() // 2)
    assert TrainerConfig.model_validate(config).trainer.torch_threads == config["trainer"]["torch_threads"]
