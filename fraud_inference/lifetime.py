"""Process lifetime: no process of the service may outlive the one that started it."""

from __future__ import annotations

import os
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(signal_number: int) -> None:
    """Have the kernel send `signal_number` to this process when its parent dies, however it dies.

    A SIGKILLed parent cannot stop its children itself; without this they would run on as orphans,
    holding the port or the pool. Linux only; elsewhere the pipes' EOF still stops the workers.
    """
    if sys.platform != "linux":
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal_number)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal_number)
