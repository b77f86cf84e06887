"""Worker processes that end with the process that started them.

A sweep (``simulate.grid``) and a report (``analysis._parallel``) hand their work to joblib's worker
processes (loky). The workers are the main process's children, but nothing ends them when it is
killed with SIGKILL: they wait for work that never comes, holding their memory, and keep loky's
resource tracker alive with them. :func:`end_with_parent` is the workers' initializer: each one
watches its parent and ends when it is gone (the tracker, its last user gone, ends too).
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5
"""How often a worker checks its parent, in seconds."""


def end_with_parent(parent: int) -> None:
    """In a worker process started by ``parent`` (a pid): start a daemon thread that ends this
    process (``os._exit``) as soon as its parent is no longer ``parent`` (a process whose parent
    dies is re-parented, to init or a subreaper), whatever it is computing at that moment (the
    engines' kernels and XLA release the GIL). Nothing in ``parent`` itself (a backend that runs
    the work in-process)."""
    if os.getpid() == parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def loky_config() -> dict:
    """joblib's loky backend whose workers end with this process (:func:`end_with_parent`), as
    keyword arguments of ``joblib.parallel_config``."""
    return {"backend": "loky", "initializer": end_with_parent, "initargs": (os.getpid(),)}
