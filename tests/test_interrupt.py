"""Ctrl-C of the Ray controller (`grid.interrupt.CtrlC`), without Ray: a child process enters the
block and either polls the flag (it stops in its own time) or blocks where no signal gets it out
(its watchdog ends it after the grace period, or at a second Ctrl-C)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import signal, sys, threading, time
    from litestage_bench.grid.interrupt import CtrlC
    mode, grace = sys.argv[1], float(sys.argv[2])
    # as an interactive Python has it, whatever the test runner's own SIGINT (a background job ignores it)
    signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "ignored" else signal.default_int_handler)
    with CtrlC(grace, lambda line: print(line, flush=True)) as ctrl_c:
        print("READY", flush=True)
        if mode == "polls":
            while not ctrl_c.requested.is_set():
                time.sleep(0.05)
            print("stopped in its own time", flush=True)
        elif mode == "ignored":
            time.sleep(2)
            print("still here", flush=True)
        elif mode == "stuck":
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # never returns: the handler only sets the flag
    if mode == "after":
        print("LEFT", flush=True)
        time.sleep(30)
""")


def _child(mode: str, grace: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(grace)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ready = "LEFT" if mode == "after" else "READY"
    while (line := proc.stdout.readline()) and line.strip() != ready:
        pass
    return proc


def _ends(proc: subprocess.Popen, within: float) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=within)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, time.monotonic() - start


def test_a_controller_that_polls_stops_in_its_own_time():
    proc = _child("polls", 30)
    proc.send_signal(signal.SIGINT)
    code, out, _ = _ends(proc, 20)
    assert code == 0 and "stopped in its own time" in out and "KeyboardInterrupt" not in out, out


def test_a_stuck_controller_is_ended_after_the_grace_period():
    proc = _child("stuck", 1.5)
    proc.send_signal(signal.SIGINT)
    code, out, took = _ends(proc, 30)
    assert code == 2, out
    assert "rerun the same command to resume" in out and "not stopped 1.5 s after Ctrl-C" in out, out
    assert took >= 1.0


def test_a_second_ctrl_c_ends_a_stuck_controller_at_once():
    proc = _child("stuck", 120)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, out, took = _ends(proc, 30)
    assert code == 2 and "Ctrl-C again" in out, out
    assert took < 30


def test_outside_the_block_ctrl_c_is_pythons_own_again():
    proc = _child("after", 30)
    proc.send_signal(signal.SIGINT)
    code, out, _ = _ends(proc, 20)
    assert code != 0 and "KeyboardInterrupt" in out and "Ctrl-C: stopping" not in out, out


def test_an_ignored_ctrl_c_stays_ignored():
    proc = _child("ignored", 30)
    proc.send_signal(signal.SIGINT)
    code, out, _ = _ends(proc, 20)
    assert code == 0 and "still here" in out and "Ctrl-C: stopping" not in out, out
