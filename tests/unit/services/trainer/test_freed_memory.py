"""The trainer keeps large freed blocks for reuse (glibc), so a training step's big tensors do not come
back as fresh pages the kernel must fault in and zero at every step."""

import json
import subprocess
import sys

import pytest

from services.trainer.config import TrainerConfig

# Allocates and touches a 64 MB buffer three times, and prints the minor page faults of the last two.
_PROBE = """
import json, resource, sys
import numpy as np
import torch
from services.trainer.backend import LocalBackend
from services.trainer.config import TrainerConfig
LocalBackend(TrainerConfig.model_validate({"trainer": {"keep_freed_memory": sys.argv[1] == "on",
                                                       "torch_threads": 1}}), torch.device("cpu"))
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(16 * 1024 * 1024, dtype=np.float32)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults[1:]))
"""


def _faults(setting: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", _PROBE, setting], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_freed_large_block_is_reused_instead_of_faulted_in_again():
    # By default each 64 MB block is a new mapping: at least 32 faults (2 MB transparent huge pages, as
    # numpy asks for) and 16,384 with 4 KB pages. Kept, the next block reuses pages already there.
    off, on = _faults("off"), _faults("on")
    assert min(off) >= 32, off
    assert max(on) * 8 <= min(off), (on, off)


def test_it_is_on_by_default_and_can_be_turned_off():
    assert TrainerConfig().trainer.keep_freed_memory is True
    assert TrainerConfig.model_validate({"trainer": {"keep_freed_memory": False}}).trainer.keep_freed_memory is False
    with pytest.raises(ValueError, match="keep_freed_memory"):
        TrainerConfig.model_validate({"trainer": {"keep_freed_memory": "sometimes"}})
