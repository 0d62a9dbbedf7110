"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: start a new session and get SIGTERM if the parent dies (Linux).

    The local stack starts Kafka and the services in their own sessions so that Ctrl-C reaches
    only the stack, which stops them in order; this makes sure that a stack killed with SIGKILL
    still takes its children with it.
    """
    os.setsid()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
