"""Worker processes for serve's CPU-heavy Python (flattening spans, analytics): spawned, tied to serve's life, and
without the cyclic garbage collector."""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

PARENT_CHECK_SECONDS = 0.5


def new_worker_pool(workers: int, setup: Callable[..., None] | None = None, setup_args: tuple[Any, ...] = ()
                    ) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of `workers` spawned processes; each runs `setup(*setup_args)` once it has started."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(os.getpid(), setup, setup_args))


def _worker_init(parent_pid: int, setup: Callable[..., None] | None, setup_args: tuple[Any, ...]) -> None:
    """Tie the worker's life to the serve process, turn off the cyclic GC, then the pool's own setup."""
    # If serve is SIGKILLed, its workers must not linger holding its pipes and the spool: a worker whose parent is
    # gone exits within PARENT_CHECK_SECONDS. Not PR_SET_PDEATHSIG: Linux sends that when the *thread* that spawned
    # the worker ends — the applier thread, at every shutdown — and a worker killed while it waits on the call
    # queue dies holding the queue's lock, so the other workers and serve's exit, which joins them, wait for ever
    # (a hang at 1 stop in 5, seen with faulthandler: the last worker blocked in call_queue.get()).
    def exit_with_the_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=exit_with_the_parent, name="exit-with-serve", daemon=True).start()
    gc.disable()  # the work makes millions of short-lived objects and no cycles; GC passes cost ~30 %
    if setup is not None:
        setup(*setup_args)
