"""The fast CPU path against float32, side by side in one process (results/numerics/fast_path.*).

`python -m litestage_bench.studies.fast_path --model M [--numerics float32,bf16-matmul] [--limit 16] [--timed 4]`
loads the model once per numerics and measures, interleaved on the same items (the order alternates
per chunk / question / repetition, warm-up excluded):
- items per hour of batched evaluation (the accuracy runs: `--batch-size` questions at a time);
- seconds per question at batch 1 (how speedups are timed);
- batch-1 decode tokens/s of the executor (64 tokens after a Recall prompt), against the memory-bandwidth
  limit: the bytes one decoded token reads (the format's own, and float32's) at the read bandwidth
  measured here with the same threads, once per repetition between the decode runs;
- skip efficiency (measured / ideal decode speedup of whole-layer plans, as `speed.py`);
- answers changed against float32 on the batched items, and the noise floor `noise_floor.py` measured.
Peak resident memory is taken per numerics in a child process that loads the model and runs one
batched chunk and one batch-1 question (the parent holds every numerics at once). `--profile` also
writes where the time goes in one batched chunk and one batch-1 question (torch.profiler, by op).
Rows are merged into fast_path.json by (model, numerics); fast_path.md is rebuilt from it.
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

import torch
from tabulate import tabulate

from ..core.errors import UserError
from ..engine.executor import synchronize
from ..engine.models import check_numerics
from ..engine.numerics import text_model
from ..engine.plan import DENSE, StagePlan
from ..evaluation.benchmarks import load_split
from ..evaluation.runner import Session, default_config, log
from ..records.noise import noise_floor_for
from ..records.results import machine_info, write_text_atomic
from .speed import skip_plan_speedups

OUT_DIR = Path(__file__).resolve().parents[2] / "results" / "numerics"
ALLOCATOR_ENV = "MALLOC_MMAP_THRESHOLD_"


def read_bandwidth_gb_s(size_mb: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth with the current torch threads: median over repeats of summing a
    buffer far larger than the caches."""
    buf = torch.ones(size_mb * (1 << 20) // 4)
    buf.sum()
    secs = []
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        secs.append(time.perf_counter() - start)
    return buf.numel() * 4 / statistics.median(secs) / 1e9


def bytes_per_token(model: torch.nn.Module, float32: bool = False) -> int:
    """Weight bytes one batch-1 decode step reads: the decoder layers, final norm and LM head (the
    embedding contributes one row). `float32`: as if every weight were float32."""
    base = text_model(model)
    tensors = [p for layer in base.layers for p in layer.parameters()]
    tensors += list(base.norm.parameters()) + [model.lm_head.weight]
    return sum(t.numel() * (4 if float32 else t.element_size()) for t in tensors)


def _recall_prompt(session: Session, bench: str) -> list[int]:
    reasoner = session.reasoner(bench, default_config(session.loaded))
    return reasoner.prompts.recall(reasoner.prompts.header(load_split(bench, "calib", limit=1)[0]))


def measure(model: str, numerics: list[str], bench: str, limit: int, timed: int, batch_size: int,
            new_tokens: int, repeats: int) -> dict[str, dict]:
    """Every number of a row except the peak memory, per numerics, interleaved in this process."""
    sessions = {n: Session.open(model, numerics=n) for n in numerics}
    reasoners = {n: s.reasoner(bench, default_config(s.loaded)) for n, s in sessions.items()}
    items = load_split(bench, "eval", limit=limit)
    for n, r in reasoners.items():  # warm-up: allocator, header cache, kernels
        r.solve_batch(items[:2], DENSE)
        r.solve(items[0], DENSE)
    order = list(numerics)
    batched = {n: 0.0 for n in numerics}
    preds: dict[str, list] = {n: [] for n in numerics}
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        for n in order:
            start = time.perf_counter()
            preds[n] += [res.prediction for res in reasoners[n].solve_batch(chunk, DENSE)]
            batched[n] += time.perf_counter() - start
        order.reverse()
        log(f"[fast_path] {model} batched {i + len(chunk)}/{len(items)}: "
            + ", ".join(f"{n} {batched[n] / (i + len(chunk)):.2f} s/q" for n in numerics))
    single = {n: [] for n in numerics}
    for q in items[:timed]:
        for n in order:
            single[n].append(reasoners[n].solve(q, DENSE).latency_s)
        order.reverse()
    log(f"[fast_path] {model} batch 1: " + ", ".join(f"{n} {statistics.median(v):.2f} s/q" for n, v in single.items()))
    prompt = _recall_prompt(sessions[numerics[0]], bench)
    decode = {n: [] for n in numerics}
    bandwidths = []
    for _ in range(repeats):
        bandwidths.append(read_bandwidth_gb_s(repeats=3))  # beside the decode runs, under the same load
        for n in order:
            ex = sessions[n].executor
            synchronize(ex.device)
            start = time.perf_counter()
            ex.generate([prompt], StagePlan(), new_tokens)
            decode[n].append(new_tokens / (time.perf_counter() - start))
        order.reverse()
    bandwidth = statistics.median(bandwidths)
    reference = numerics[0]
    rows = {}
    for n in numerics:
        m = sessions[n].loaded.model
        skips = skip_plan_speedups(sessions[n], prompt, new_tokens, repeats)
        floor = noise_floor_for(model, n)
        rows[n] = {
            "model": model, "numerics": n, "bench": bench, "n_items": len(items), "batch_size": batch_size,
            "items_per_hour": 3600 * len(items) / batched[n],
            "batch1_s_per_question": statistics.median(single[n]), "n_timed": len(single[n]),
            "decode_tok_s": statistics.median(decode[n]), "new_tokens": new_tokens,
            "read_bandwidth_gb_s": bandwidth,
            "bandwidth_limit_tok_s": bandwidth * 1e9 / bytes_per_token(m),
            "float32_bandwidth_limit_tok_s": bandwidth * 1e9 / bytes_per_token(m, float32=True),
            "skip_efficiency": min(s["efficiency"] for s in skips),
            "skip_plans": [{k: s[k] for k in ("plan", "ideal_speedup", "measured_speedup", "efficiency")}
                           for s in skips],
            "answer_flips_vs_float32": (None if reference != "float32" else
                                        sum(a != b for a, b in zip(preds[reference], preds[n]))),
            "noise_floor_flips": ({"answer_flip_rate": floor.get("answer_flip_rate"),
                                   "answer_flips": floor.get("answer_flips"), "comparisons": floor.get("comparisons"),
                                   "variants": floor.get("variants")} if floor.get("measured") else
                                  {"answer_flip_rate": None, "note": floor.get("note")}),
        }
        vs = rows[reference]
        rows[n]["vs_float32"] = {
            "items_per_hour": rows[n]["items_per_hour"] / vs["items_per_hour"],
            "batch1_speedup": vs["batch1_s_per_question"] / rows[n]["batch1_s_per_question"],
            "decode_speedup": rows[n]["decode_tok_s"] / vs["decode_tok_s"],
        } if reference == "float32" else None
    return rows


def peak_rss_gb(model: str, numerics: str, bench: str, batch_size: int) -> float:
    """Peak resident memory of a process that loads the model and answers one batch and one question."""
    code = ("import resource, sys; from litestage_bench.studies.fast_path import _memory_probe; "
            f"_memory_probe({model!r}, {numerics!r}, {bench!r}, {batch_size}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / (1 << 20)  # ru_maxrss is in KiB on Linux


def _memory_probe(model: str, numerics: str, bench: str, batch_size: int) -> None:
    session = Session.open(model, numerics=numerics)
    reasoner = session.reasoner(bench, default_config(session.loaded))
    items = load_split(bench, "eval", limit=batch_size)
    reasoner.solve_batch(items, DENSE)
    reasoner.solve(items[0], DENSE)


def profile(model: str, numerics: str, bench: str, batch_size: int, top: int = 12) -> str:
    """Markdown: the ops that take the time of one batched chunk and of one batch-1 question."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    session = Session.open(model, numerics=numerics)
    reasoner = session.reasoner(bench, default_config(session.loaded))
    items = load_split(bench, "eval", limit=batch_size + 1)
    reasoner.solve_batch(items[:batch_size], DENSE)  # warm-up
    sections = []
    for what, fn in ((f"one batched chunk ({batch_size} questions)", lambda: reasoner.solve_batch(items[1:], DENSE)),
                     ("one batch-1 question", lambda: reasoner.solve(items[0], DENSE))):
        start = time.perf_counter()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        wall = time.perf_counter() - start
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        rows = [[e.key, e.count, f"{e.self_cpu_time_total / 1e6:.2f}", f"{e.self_cpu_time_total / total:.1%}"]
                for e in events[:top]]
        sections.append(f"### {what}: {wall:.1f} s wall (profiled)\n\n"
                        + tabulate(rows, headers=["op", "calls", "self CPU s", "share"], tablefmt="github"))
    return f"## {model}, {numerics}, {bench}, {torch.get_num_threads()} threads\n\n" + "\n\n".join(sections) + "\n"


def write_table(out_dir: Path) -> None:
    doc = json.loads((out_dir / "fast_path.json").read_text())
    rows = []
    for r in doc["rows"]:
        vs = r.get("vs_float32") or {}
        nf = r["noise_floor_flips"]
        floor = (f"worst {nf['answer_flip_rate']:.1%}; pooled {nf['answer_flips']}/{nf['comparisons']}"
                 if nf.get("answer_flip_rate") is not None else "not measured")
        flips = "" if r["answer_flips_vs_float32"] is None else f"{r['answer_flips_vs_float32']}/{r['n_items']}"
        rows.append([r["model"], r["numerics"], f"{r['items_per_hour']:.0f} ({vs.get('items_per_hour', 1):.2f}x)",
                     f"{r['batch1_s_per_question']:.2f} ({vs.get('batch1_speedup', 1):.2f}x)",
                     f"{r['decode_tok_s']:.1f} ({vs.get('decode_speedup', 1):.2f}x)",
                     f"{r['bandwidth_limit_tok_s']:.1f} / {r['float32_bandwidth_limit_tok_s']:.1f}",
                     f"{r['decode_tok_s'] / r['float32_bandwidth_limit_tok_s']:.0%}",
                     f"{r['skip_efficiency']:.2f}", flips, floor, f"{r['peak_rss_gb']:.2f}", r["threads"],
                     r["machine"]["cpu"]])
    table = tabulate(rows, headers=["model", "numerics", "items/hour batched (vs float32)",
                                    "batch-1 s/question (speedup)", "decode tok/s (speedup)",
                                    "bandwidth limit tok/s: format / float32", "decode / float32 limit",
                                    "skip efficiency (min)", "answers changed vs float32", "noise floor flips",
                                    "peak RSS GB", "threads", "CPU"], tablefmt="github")
    commands = "\n".join(f"- `{c}`" for c in dict.fromkeys(r["command"] for r in doc["rows"]))
    md = ("# The fast CPU path against float32\n\nEach row's ratios were measured side by side with float32 in "
          "one process (interleaved, warm-up excluded) on the items and CPU it names; speeds are comparable only "
          "within a model's rows. Batched: accuracy runs at the row's batch size; batch 1: how speedups are "
          "timed. The bandwidth limit is the weight bytes a decoded token reads at the read bandwidth measured "
          "in the same run. Answers changed vs float32: the batched items, a different rounding of the same "
          "model (not noise). Noise floor: `results/numerics/noise_floor.md`.\n\n"
          f"{table}\n\nProduced by:\n{commands}\n- `python -m litestage_bench.studies.fast_path --table-only`\n")
    write_text_atomic(out_dir / "fast_path.md", md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.fast_path", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--numerics", default="float32,bf16-matmul", help="the first is the reference")
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--limit", type=int, default=16, help="items of the batched measurement")
    ap.add_argument("--timed", type=int, default=4, help="of them timed at batch 1")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also write where the time goes (profile_*.md)")
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--table-only", action="store_true", help="rebuild fast_path.md from fast_path.json")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.table_only:
        write_table(out_dir)
        return 0
    numerics = [n for n in args.numerics.split(",") if n]
    try:
        for n in numerics:
            check_numerics(args.model, None, n)
    except UserError as err:
        print(f"fast_path: error: {err}", file=sys.stderr)
        return 2
    command = "python -m litestage_bench.studies.fast_path " + " ".join(sys.argv[1:] if argv is None else argv)
    rss = {}
    for n in numerics:
        log(f"[fast_path] {args.model} {n}: peak memory of a separate process")
        rss[n] = peak_rss_gb(args.model, n, args.bench, args.batch_size)
    rows = measure(args.model, numerics, args.bench, args.limit, args.timed, args.batch_size, args.new_tokens,
                   args.repeats)
    machine = machine_info()
    machine["allocator"] = {ALLOCATOR_ENV: os.environ.get(ALLOCATOR_ENV)}
    for n, row in rows.items():
        row.update(peak_rss_gb=rss[n], threads=torch.get_num_threads(), machine=machine, command=command)
    path = out_dir / "fast_path.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    merged = [r for r in old if (r["model"], r["numerics"]) not in {(args.model, n) for n in numerics}]
    merged = sorted(merged + list(rows.values()), key=lambda r: (r["model"], r["numerics"] != "float32", r["numerics"]))
    write_text_atomic(path, json.dumps({"rows": merged}, indent=1))
    write_table(out_dir)
    if args.profile:
        for n in numerics:
            text = profile(args.model, n, args.bench, args.batch_size)
            write_text_atomic(out_dir / f"profile_{args.model}_{n}.md", f"Produced by: `{command}`\n\n{text}")
    print((out_dir / "fast_path.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
