"""Child processes that do not outlive the process that started them, how many cores they may use, how
the C allocator treats large blocks, and what the cyclic garbage collector walks."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: between fork and exec the child of a threaded process may only
# make simple calls (find_library itself runs subprocesses).
_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None
_prctl = _libc.prctl if _libc is not None else None
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def die_with_parent() -> None:
    """``preexec_fn`` for Popen (use with ``start_new_session=True``): SIGTERM when the parent dies.

    The local stack starts Kafka and the services in their own sessions so that Ctrl-C reaches
    only the stack, which stops them in order; this makes sure that a stack killed with SIGKILL
    still takes its children with it (Linux; a no-op where prctl is missing).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def available_cpus(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a Kubernetes CPU limit,
    rounded up), at least 1. ``os.cpu_count()`` counts the node's cores, which a pod may not have."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    root = Path(cgroup_root)
    quota = _read_quota(root / "cpu.max") or _read_quota(root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _read_quota(path: Path, period_path: Path | None = None) -> float | None:
    """Cores a cgroup quota allows: cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>"), or v1's
    quota and period files. None when there is no limit or the files are missing or unreadable."""
    try:
        text = path.read_text().split()
        if period_path is not None:
            text.append(period_path.read_text().strip())
        quota, period = int(text[0]), int(text[1])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None  # "max" (no limit), a missing file or garbage
    return quota / period if quota > 0 and period > 0 else None


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heaps and keep what is freed for the next request.

    By default glibc maps every block above 32 MiB afresh and unmaps it on free, so each training step's
    largest tensors (the [targets, candidates] logits and their gradient, ~50 MB each on ml-latest-small)
    came back as new pages the kernel had to fault in and zero. One thread on ml-latest-small: 724-786
    events/s before, 942-989 after, peak RSS 1.42-1.43 -> 1.65-1.68 GB. Returns whether the allocator took
    the settings (False where the C library is not glibc).
    """
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def freeze_heap() -> int:
    """Collect, then leave every object alive now out of the cyclic garbage collector's full passes
    (``gc.freeze``); -> the objects frozen. Every service calls it once started (``run_service``).

    A full pass walks every tracked object, and a service's imports alone are 60,000 (ingester, inference)
    to 220,000 (trainer, with torch): 30-140 ms per pass on a quiet core, 100-330 ms on the loaded 2-core
    machine, during which every thread of the process waits. Such passes came every few seconds to minutes,
    and were the slowest of ``bench freshness``'s history probes. Objects frozen are still freed when
    their last reference goes; only garbage in reference cycles among them stays (none at start-up, which
    loads modules, settings and the first state).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def collector_paused():
    """No automatic garbage collection inside the block (it runs again, as it was, after): for a timed
    section of a measuring process, whose own pauses are not the latency it measures."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
