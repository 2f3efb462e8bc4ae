"""Wall time of one grid under `-n 2` and under `--ray` on a local two-node Ray cluster (one CPU
per node), interleaved A/B/B/A so that a drift of the machine hits both sides; writes each run and
the medians to OUT (JSON).

    python scripts/ray_overhead.py --out results/ray/overhead.json [--pairs 1] [-- GRID OPTIONS]

About 4 x 22 min on a 2-core machine with the default grid; run it on an otherwise idle machine.

Needs the ray extra. The cluster is started and stopped here (Ray's cluster utilities).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the default grid of the default model (3 groups of 10 cases), measured afresh: the overhead goal's grid
GRID = ["--models", "smollm2-135m", "--grid-cache", "off"]


def case_times(folder: Path) -> dict:
    """A run's session time and its cases' own seconds (what the backend does not change), in all and
    per worker slot. With 3 groups on 2 slots one slot runs two groups, and the session lasts about
    that slot's cases plus what happens outside them (start, imports, model loads, report)."""
    doc = json.loads((folder / "grid.json").read_text())
    per_slot: dict[str, float] = {}
    for c in doc["cases"]:
        per_slot[c["worker"]] = per_slot.get(c["worker"], 0.0) + c["accuracy_seconds"] + c["timed_seconds"]
    busiest = max(per_slot.values())
    return {"session_s": doc["wall_seconds"], "cases": len(doc["cases"]), "case_seconds_sum": sum(per_slot.values()),
            "case_seconds_per_slot": per_slot, "busiest_slot_case_s": busiest,
            "outside_busiest_slot_s": doc["wall_seconds"] - busiest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=1, help="A/B/B/A blocks (2 runs of each side per block)")
    ap.add_argument("--work", default="/tmp/litestage-ray-overhead", help="grid output folders of the runs")
    ap.add_argument("grid", nargs="*", help="grid options (default: %(default)s)", default=GRID)
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from litestage_bench.records.results import machine_info

    store = 80 * 2 ** 20  # object store bytes per node: the grid moves only small JSON
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": store})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    try:
        cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        for i, side in enumerate(["n2", "ray", "ray", "n2"] * args.pairs):
            folder = Path(args.work) / f"{side}-{i}"
            extra = ["-n", "2"] if side == "n2" else ["--ray", cluster.address]
            cmd = ["pytest", "tests/bench_grid.py", "--benchmark-only", *args.grid, "-q", "--grid-out", str(folder), *extra]
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode:
                sys.exit(f"ray_overhead: run {i} ({side}) failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
            runs.append({"side": side, "run": i, "wall_s": wall, **case_times(folder),
                         "load_avg_1min_after": os.getloadavg()[0], "command": " ".join(cmd)})
            print(json.dumps(runs[-1]), flush=True)
    finally:
        cluster.shutdown()
    med = {s: statistics.median(r["wall_s"] for r in runs if r["side"] == s) for s in ("n2", "ray")}
    out = {"what": "wall time of the same grid: -n 2 vs --ray on a local two-node cluster (1 CPU each)",
           "command": "python scripts/ray_overhead.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
           "machine": {**machine_info(), "ray": ray.__version__},
           "runs": runs, "median_wall_s": med, "ratio_ray_over_n2": med["ray"] / med["n2"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"median wall: -n 2 {med['n2']:.1f} s, --ray {med['ray']:.1f} s, ratio {out['ratio_ray_over_n2']:.2f}")


if __name__ == "__main__":
    main()
