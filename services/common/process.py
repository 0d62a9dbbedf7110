"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: between fork and exec the child of a threaded process may only
# make simple calls (find_library itself runs subprocesses).
_libc_name = ctypes.util.find_library("c")
_prctl = ctypes.CDLL(_libc_name, use_errno=True).prctl if _libc_name else None


def die_with_parent() -> None:
    """``preexec_fn`` for Popen (use with ``start_new_session=True``): SIGTERM when the parent dies.

    The local stack starts Kafka and the services in their own sessions so that Ctrl-C reaches
    only the stack, which stops them in order; this makes sure that a stack killed with SIGKILL
    still takes its children with it (Linux; a no-op where prctl is missing).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
