"""Ctrl-C for a controller that spends its time in native calls (the Ray backend's wait loop).

Inside `CtrlC`, SIGINT only sets `requested`; the controller's loop reads it between calls and
stops in its own time (cancel, drain, shut down), so no KeyboardInterrupt is raised inside Ray's
C++ code. On a loaded 2-core machine a driver's `ray.wait(timeout=0.5)` interrupted that way was
seen to stay in that call long after its timeout. A watchdog thread, woken by the signal itself (Python's wakeup
fd, written by the C-level handler even while the main thread is in native code), ends the process
with exit code 2 when the controller has not ended `grace_s` seconds after the Ctrl-C, or at a
second Ctrl-C. A driver that ends so leaves its tasks to Ray, which ends a dead driver's job.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Callable

# what an interrupted grid says at the end, however it ended
INTERRUPTED = ("interrupted: tables not written; the accuracy of finished cases (and finished batches of the "
               "running ones) is cached: rerun the same command to resume")


class CtrlC:
    """`with CtrlC(grace_s, say) as ctrl_c:` ... `if ctrl_c.requested.is_set(): stop`. `say(line)`
    prints the watchdog's lines. Outside the main thread, or where SIGINT is ignored, it does nothing."""

    def __init__(self, grace_s: float, say: Callable[[str], None], exit_code: int = 2) -> None:
        self.grace_s, self.say, self.exit_code = grace_s, say, exit_code
        self.requested = threading.Event()
        self._active = False

    def __enter__(self) -> "CtrlC":
        # signals go to the main thread; and a process started with SIGINT ignored (a background job,
        # nohup) keeps it ignored
        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old_handler = signal.signal(signal.SIGINT, lambda signum, frame: self.requested.set())
        self._active = True
        threading.Thread(target=self._watch, name="ctrl-c watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._active:
            return
        signal.signal(signal.SIGINT, self._old_handler)
        signal.set_wakeup_fd(self._old_fd)
        if not self.requested.is_set():
            os.close(self._write)  # the watchdog reads the end of the pipe and stops
        # after a Ctrl-C the watchdog stays armed until the process ends

    def _sigints(self, timeout: float | None) -> int | None:
        """SIGINTs read from the wakeup fd within `timeout` (None: wait); None once the pipe is closed."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return 0
        data = os.read(self._read, 512)
        return data.count(signal.SIGINT) if data else None

    def _watch(self) -> None:
        seen = 0  # SIGINTs read (the handler may set `requested` before the first is read)
        while not (seen or self.requested.is_set()):
            got = self._sigints(None)
            if got is None:  # the block ended without Ctrl-C
                os.close(self._read)
                return
            seen += got
        self.requested.set()
        self.say("Ctrl-C: stopping (cancelling the running tasks); Ctrl-C again to end now")
        deadline = time.monotonic() + self.grace_s
        while seen < 2 and (left := deadline - time.monotonic()) > 0:
            got = self._sigints(left)
            if got is None:  # the controller left the block meanwhile: no signal comes here any more
                time.sleep(left)
            else:
                seen += got
        self._end("Ctrl-C again" if seen >= 2 else f"not stopped {self.grace_s:g} s after Ctrl-C")

    def _end(self, why: str) -> None:
        self.say(f"{INTERRUPTED} (ended: {why})")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_code)
