"""The grid on a Ray cluster (`pytest --benchmark-only --ray ADDRESS`): a local cluster of two nodes
on this machine (Ray's cluster utilities, one CPU each), started and stopped here, runs a
small grid of a tiny random llama (a local model folder); its merged records and tables equal a
serial run's except timings and where the cases ran. A worker killed mid-case is retried: the
finished cases are kept, the running one resumes from its checkpointed batches, and the records
still equal serial's; with no retries left the run fails naming the case."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from test_grid_parallel import _records  # noqa: E402

from litestage_bench.evaluation.benchmarks import load_split  # noqa: E402
from litestage_bench.evaluation.runner import SEED  # noqa: E402
from litestage_bench.grid.cases import GridCase  # noqa: E402
from litestage_bench.grid.report import without_timings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 3
# batches of one question, so that a case checkpoints a batch early and a kill lands mid-case
SELECTION = ["--benches", "obqa,csqa", "--methods", "dense,unified", "--points", "unified=1", "--limit", str(LIMIT),
             "--timed", "1", "--rounds", "1", "--batch-size", "1", "-q", "-p", "no:randomly"]
KILLED = "obqa-unified-k1"
# measured times beyond those the fake runner of test_grid_parallel makes (its VOLATILE): a real case's
# prefill seconds, timing rounds and speedup decomposition, and its model load
TIMES, LOAD = {"prefill_s", "timing_rounds", "speedup_decomposition"}, {"load_seconds", "load_from_cache"}  # the case whose worker is killed (after its group's dense case finished)


@pytest.fixture(scope="module")
def tiny_model(tokenizer, tmp_path_factory) -> Path:
    """A tiny random llama with SmolLM2's tokenizer, saved like any local model (the same path on both nodes)."""
    from tiny_reasoner import tiny_llama
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine with one CPU each; stopped at the end even when a test fails. (On the
    loopback address, 127.0.0.1, Ray 2.60's GCS still advertised the host's address and drivers could not connect.)"""
    from ray.cluster_utils import Cluster
    store = 80 * 2 ** 20  # bytes of object store per node: the grid moves only small JSON
    # idle workers are kept (Ray's default kills those beyond a node's CPUs after 1 s), so a test can start
    # its worker processes ahead and not depend on how fast a loaded machine starts one
    config = {"idle_worker_killing_time_threshold_ms": 600_000}
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                          "object_store_memory": store, "_system_config": config})
    try:
        nodes.add_node(num_cpus=1, object_store_memory=store)
        nodes.wait_for_nodes()
        yield nodes.address
    finally:
        nodes.shutdown()


def _command(model: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    # -X faulthandler: a crash of the controller prints its Python stacks, teardown included
    return [sys.executable, "-X", "faulthandler", "-m", "pytest", "tests/bench_grid.py", "--benchmark-only", "--models", str(model),
            *SELECTION, "--grid-out", str(out), "--grid-cache", str(cache), *extra]


def _env(tmp: Path, **more: str) -> dict:
    # the model conversion cache and the search locks of this test only; one thread, as each Ray task has
    return {**os.environ, "OMP_NUM_THREADS": "1", "LITESTAGE_CACHE": str(tmp / "user-cache"), **more}


def _run(model: Path, tmp: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(model, tmp / name, tmp / f"cache-{name}", *extra), cwd=ROOT, env=_env(tmp),
                          capture_output=True, text=True, timeout=600)


def _doc(tmp: Path, name: str, proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / name / "grid.json").read_text())


def _untimed(doc: dict, folder: Path) -> dict:
    out = _records(doc, folder)
    for rec in out.values():
        for d in (rec, *rec["items"]):
            for key in TIMES:
                d.pop(key, None)
        for key in LOAD:
            rec["extra"].pop(key)
    return out


def _assert_same_as_serial(serial: tuple[Path, dict], doc: dict, folder: Path) -> None:
    """Tables and records equal a serial run's except timings and where the cases ran (worker, accuracy cache)."""
    stmp, sdoc = serial
    assert [without_timings(g) for g in sdoc["groups"]] == [without_timings(g) for g in doc["groups"]]
    recs_serial, recs_ray = _untimed(sdoc, stmp / "serial"), _untimed(doc, folder)
    assert {r["extra"]["grid"].pop("accuracy_cache") for r in recs_ray.values()} == {"shared"}
    assert len(recs_serial) == 4 and recs_serial == recs_ray


@pytest.fixture(scope="module")
def serial(tiny_model, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("serial")
    return tmp, _doc(tmp, "serial", _run(tiny_model, tmp, "serial"))


def test_two_nodes_merge_to_the_serial_records(cluster, tiny_model, serial, tmp_path):
    ray_run = _run(tiny_model, tmp_path, "ray", "--ray", cluster)
    doc = _doc(tmp_path, "ray", ray_run)
    _assert_same_as_serial(serial, doc, tmp_path / "ray")

    backend = doc["backend"]
    assert backend["name"] == "ray" and backend["address"] == cluster and backend["accuracy_cache"] == "shared"
    assert len(backend["nodes"]) == 2 and all(n["resources"]["CPU"] == 1 for n in backend["nodes"])
    assert len({n["node_id"] for n in backend["nodes"]}) == 2
    tasks = backend["tasks"]
    assert sorted(tasks) == sorted({GridCase(c["model"], c["bench"]).group for c in doc["cases"]})
    assert all(t["status"] == "done" and len(t["attempts"]) == 1 and t["request"] == {"num_cpus": 1}
               for t in tasks.values())
    # a Ray worker per task, each in one group only
    assert len({c["worker"] for c in doc["cases"]}) == 2 and all(c["worker"].startswith("ray:") for c in doc["cases"])
    assert "Backend: Ray" in (tmp_path / "ray" / "table.md").read_text()
    assert ray_run.stdout.count("[grid ") == 4 and "last case" in ray_run.stdout


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start
        running += step
        most = max(most, running)
    return most


def test_a_group_waiting_on_the_collector_keeps_its_cpu(cluster):
    """Three one-CPU tasks on the two one-CPU nodes, each first waiting on an actor call, as a group waits
    on the collector. The call is a barrier: it returns once all its callers have called, or after its
    timeout. Waiting with `get_keeping_cpus`, at most two run at once (the barrier times out after 6 s);
    waiting in a plain ray.get on the task's main thread, Ray lends the waiting tasks' CPUs and the third
    starts beside them. Two worker processes per node are started first, so that neither outcome depends on
    how fast a busy machine starts a worker and imports the package (once 38 s)."""
    import threading

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from litestage_bench.grid.ray_backend import get_keeping_cpus

    @ray.remote(num_cpus=0, max_concurrency=4)
    class Barrier:
        def __init__(self, callers: int) -> None:
            self.callers, self.arrived, self.all_in = callers, 0, threading.Condition()

        def wait(self, timeout: float) -> int:
            with self.all_in:
                self.arrived += 1
                self.all_in.notify_all()
                self.all_in.wait_for(lambda: self.arrived >= self.callers, timeout)
                return self.arrived

    @ray.remote(num_cpus=0)
    def warm(barrier) -> None:  # a worker's first call of get_keeping_cpus imports the package (torch): slow
        get_keeping_cpus(barrier.wait.remote(120.0))

    @ray.remote(num_cpus=1)
    def group(barrier, keep: bool, timeout: float) -> tuple[float, float]:
        start = time.time()  # one machine: the nodes share the clock
        (get_keeping_cpus if keep else ray.get)(barrier.wait.remote(timeout))
        time.sleep(0.5)
        return start, time.time()

    def most_at_once(keep: bool, timeout: float) -> int:
        barrier = Barrier.remote(3)
        return _most_at_once(ray.get([group.remote(barrier, keep, timeout) for _ in range(3)]))

    ray.init(address=cluster, logging_level="ERROR")
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        barrier = Barrier.remote(2 * len(nodes))
        ray.get([warm.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(barrier)
                 for node in nodes for _ in range(2)])
        assert most_at_once(keep=True, timeout=6.0) == 2
        assert most_at_once(keep=False, timeout=120.0) == 3
    finally:
        ray.shutdown()


def _obqa_partial(cache: Path, ids: set[str]) -> bool:
    """Whether an accuracy checkpoint of an OBQA case holds a finished batch."""
    for path in cache.glob("*.partial.jsonl"):
        lines = path.read_text().splitlines()[1:]
        try:
            if any(it["id"] in ids for line in lines for it in json.loads(line)["items"]):
                return True
        except (ValueError, KeyError):
            continue
    return False


def _kill_mid_case(model: Path, tmp: Path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run the Ray grid and SIGKILL the worker of KILLED once it has checkpointed a batch; (run, killed pid)."""
    markers, cache = tmp / "markers", tmp / f"cache-{name}"
    markers.mkdir()
    ids = {q.id for q in load_split("obqa", "eval", limit=LIMIT, seed=SEED)}
    proc = subprocess.Popen(_command(model, tmp / name, cache, *extra), cwd=ROOT,
                            env=_env(tmp, LITESTAGE_RAY_MARKERS=str(markers)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, deadline = None, time.monotonic() + 300
    try:
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            marker = next(iter(markers.glob(f"*{KILLED}.started")), None)
            if marker is not None and _obqa_partial(cache, ids):
                pid = json.loads(marker.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pid is not None, "the case finished before it could be killed"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), pid


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_case_resumes_from_its_batches(cluster, tiny_model, serial, tmp_path):
    run, pid = _kill_mid_case(tiny_model, tmp_path, "killed", "--ray", cluster, "--ray-retries", "2")
    doc = _doc(tmp_path, "killed", run)
    group = next(g for g in doc["backend"]["tasks"] if g.endswith("-obqa"))
    attempts = doc["backend"]["tasks"][group]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["pid"] == pid != attempts[1]["pid"]
    # the retry kept the finished dense case and resumed the killed one from its checkpoint
    assert "resuming the accuracy run after" in run.stdout
    _assert_same_as_serial(serial, doc, tmp_path / "killed")


@pytest.mark.slow
def test_no_retries_left_fails_naming_the_case_and_writes_only_whole_cases(cluster, tiny_model, tmp_path):
    run, _ = _kill_mid_case(tiny_model, tmp_path, "failed", "--ray", cluster, "--ray-retries", "0")
    assert run.returncode == 1, run.stdout[-3000:]
    failed = next(line for line in run.stdout.splitlines() if "failed on the Ray cluster: its Ray worker died" in line)
    assert f"-{KILLED} " in failed and "retries exhausted" in failed and "--ray-retries 0" in failed
    doc = json.loads((tmp_path / "failed" / "grid.json").read_text())
    assert KILLED not in " ".join(c["case"] for c in doc["cases"])  # the other three cases, whole
    assert len(doc["cases"]) == 3


def test_an_unreachable_cluster_is_one_line(tmp_path):
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/bench_grid.py", "--benchmark-only", "--models",
                           "smollm2-135m", "--benches", "obqa", "--methods", "dense", "--grid-out", str(tmp_path),
                           "--ray", address], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"ERROR: litestage-bench grid: --ray: cannot connect to the Ray cluster at '{address}'")


@pytest.mark.parametrize("address, error", [
    ("no address", "'no address' is not a Ray address -- fix: use --ray alone (a local Ray instance), --ray auto or "
                   "--ray HOST:6379"),
    # the client server's session failed to load torch (Ray 2.60): refused before anything starts
    ("ray://127.0.0.1:10001", "'ray://127.0.0.1:10001' is a Ray client address, which the grid does not support "
                              "(the client server's session could not load torch) -- fix: run pytest on a node of "
                              "the cluster with --ray auto or --ray HOST:6379 (on Kubernetes: in the head pod, or "
                              "as a RayJob's entrypoint)")])
def test_a_bad_address_is_one_line(tmp_path, address, error):
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/bench_grid.py", "--benchmark-only",
                           "--ray", address, "--grid-out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"ERROR: litestage-bench grid: --ray: {error}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.slow
def test_ctrl_c_cancels_the_tasks_and_writes_no_tables(cluster, tiny_model, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "hold").write_text(KILLED)  # its worker waits before running it: Ctrl-C lands while it is there
    proc = subprocess.Popen(_command(tiny_model, tmp_path / "stopped", tmp_path / "cache", "--ray", cluster), cwd=ROOT,
                            env=_env(tmp_path, LITESTAGE_RAY_MARKERS=str(markers)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as a terminal delivers it, even where this run was started with SIGINT
                            # ignored (a background job), which the controller would keep
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list(markers.glob(f"*{KILLED}.started")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = {json.loads(m.read_text())["pid"] for m in markers.glob("*.started")}
        time.sleep(1)  # the group's dense case merged: the interrupted session says so
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)  # its watchdog ends it 60 s after Ctrl-C at the latest
        except subprocess.TimeoutExpired:  # where it waits: its Python stacks (faulthandler prints them at SIGABRT)
            proc.send_signal(signal.SIGABRT)
            pytest.fail("the controller did not end within 120 s of Ctrl-C:\n" + proc.communicate(timeout=60)[1][-6000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2 and "rerun the same command to resume" in out, out[-3000:]
    assert not (tmp_path / "stopped" / "grid.json").exists()
    deadline = time.monotonic() + 30  # force-cancelled: the workers that ran the groups end
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and not any(_alive(pid) for pid in workers)
