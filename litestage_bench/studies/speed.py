"""Executor speed measurements (results/executor.json), each a ratio measured side by side in one run.

1. dense decode tokens/s: executor vs `model.generate`, same model, prompt and token count, batch 1;
2. static plans skipping 25% / 50% of sub-layer FLOPs: measured decode speedup / ideal speedup,
   where ideal = per-token FLOPs of the dense model (layers + LM head) / those of the plan;
3. dense reasoner questions/minute: executor reasoner vs the naive pipeline, same items, with the
   fraction of identical predictions;
4. (`--throughput`) reasoner questions/minute with and without the shared-header cache (dense and a
   stage-wise plan that re-prefills), and with several questions per batch.
Timings: warm-up excluded, device synchronised, median over repetitions, runs interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch

from ..engine.executor import SkipExecutor, synchronize
from ..engine.plan import DENSE, SkipPlan, SkipSet, StagePlan, even_layers
from ..evaluation.benchmarks import load_split
from ..evaluation.runner import Session, default_config, log, model_facts, run_items
from ..methods.registry import make_method
from ..records.results import machine_info, write_text_atomic
from .naive import NaiveReasoner


def timed(fn: Callable[[], object], device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def side_by_side(fns: dict[str, Callable[[], object]], device, repeats: int) -> dict[str, float]:
    """Median seconds of each callable; one warm-up each, then interleaved repetitions whose order
    alternates (forward, then reversed), so that no callable always follows the same one."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            times[name].append(timed(fns[name], device))
    return {k: statistics.median(v) for k, v in times.items()}


def decode_tokens_per_second(session: Session, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    model, ex = session.loaded.model, session.executor
    ids = torch.tensor([prompt], device=ex.device)

    def hf():
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=session.loaded.tokenizer.pad_token_id)

    def executor():
        ex.generate([prompt], StagePlan(), new_tokens)

    secs = side_by_side({"executor": executor, "generate": hf}, ex.device, repeats)
    return {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats,
            "executor_tokens_per_s": new_tokens / secs["executor"],
            "generate_tokens_per_s": new_tokens / secs["generate"],
            "ratio": secs["generate"] / secs["executor"]}


def skip_plan_speedups(session: Session, prompt: list[int], new_tokens: int, repeats: int) -> list[dict]:
    ex: SkipExecutor = session.executor
    arch = ex.arch
    layer_flops = [a + f for a, f in zip(arch.attn_flops, arch.ffn_flops)]
    plans = {"dense": StagePlan()}
    for frac in (0.25, 0.5):
        layers = even_layers(arch.num_layers, round(frac * arch.num_layers))
        plans[f"skip{int(frac * 100)}"] = StagePlan.static(SkipSet.layers(layers))
    secs = side_by_side({k: (lambda p=p: ex.generate([prompt], p, new_tokens)) for k, p in plans.items()},
                        ex.device, repeats)
    rows = []
    for name, plan in plans.items():
        if name == "dense":
            continue
        skipped = sum(layer_flops[i] for i in plan.decode.attn)
        executed_fraction = 1 - skipped / sum(layer_flops)
        total = sum(layer_flops) + arch.head_flops
        ideal = total / (total - skipped)
        measured = secs["dense"] / secs[name]
        rows.append({"plan": name, "skipped_layers": sorted(plan.decode.attn),
                     "executed_sublayer_flop_fraction": executed_fraction,
                     "ideal_speedup": ideal, "ideal_speedup_layers_only": 1 / executed_fraction,
                     "measured_speedup": measured, "efficiency": measured / ideal,
                     "dense_s": secs["dense"], "plan_s": secs[name]})
    return rows


def reasoner_vs_naive(session: Session, bench: str, limit: int) -> dict:
    """Executor reasoner (shared prefix + KV reuse), the same without them, and the naive pipeline."""
    cfg = default_config(session.loaded)
    reasoner = session.reasoner(bench, cfg)
    unshared = session.reasoner(bench, default_config(session.loaded, share_prefix=False, reuse_kv=False))
    naive = NaiveReasoner(session.loaded.model, session.loaded.tokenizer, reasoner.prompts, cfg)
    items = load_split(bench, "eval", limit=limit)
    method = make_method("dense")
    facts = model_facts(session.executor, session.loaded.name)
    for r in (reasoner, unshared):
        run_items(r, method, facts, items[:1], progress=False, warmup=0)  # warm-up
    naive.solve(items[0])
    secs: dict[str, list[float]] = {"executor": [], "executor_no_prefix_reuse": [], "naive": []}
    same = same_unshared = 0
    for i, q in enumerate(items):  # interleaved, question by question, the order alternating
        if i % 2:
            preds, naive_secs = naive.solve(q)
        res = run_items(reasoner, method, facts, [q], warmup=0, progress=False)[0]
        res_unshared = run_items(unshared, method, facts, [q], warmup=0, progress=False)[0]
        if not i % 2:
            preds, naive_secs = naive.solve(q)
        secs["executor"].append(res.latency_s)
        secs["executor_no_prefix_reuse"].append(res_unshared.latency_s)
        secs["naive"].append(naive_secs)
        same += preds == res.predictions_by_rule
        same_unshared += res_unshared.predictions_by_rule == res.predictions_by_rule
    per_min = {f"{k}_questions_per_min": 60 * len(items) / sum(v) for k, v in secs.items()}
    return {"bench": bench, "n": len(items), "answer_rules_compared": ["regex", "letter", "cloze"], **per_min,
            "ratio": sum(secs["naive"]) / sum(secs["executor"]),
            "prefix_reuse_ratio": sum(secs["executor_no_prefix_reuse"]) / sum(secs["executor"]),
            "same_predictions_fraction": same / len(items),
            "same_predictions_with_and_without_prefix_reuse": same_unshared / len(items)}


def _stagewise_plan(num_layers: int) -> SkipPlan:
    """A plan whose stages skip different layers, so every stage re-prefills (no KV reuse)."""
    layers = even_layers(num_layers, 4)
    return SkipPlan({"recall": StagePlan.static(SkipSet.of(ffn=layers[:1])),
                     "analyze": StagePlan.static(SkipSet.of(ffn=layers[1:2])),
                     "summarize": StagePlan.static(SkipSet.of(ffn=layers[2:3]))}, "stagewise-ffn")


def throughput(model: str, bench: str, limit: int, batch_size: int) -> dict:
    """Questions/minute of the reasoner pipelines, interleaved chunk by chunk on the same items:
    the previous default (bfloat16, batch 1, no header cache), float32 at batch 1 with and without
    the header cache, float32 with `batch_size` questions per batch, and a stage-wise plan that
    re-prefills every stage, with and without the header cache."""
    sessions = {d: Session.open(model, dtype=d) for d in ("bfloat16", "float32")}
    items = load_split(bench, "eval", limit=limit)
    facts = model_facts(sessions["float32"].executor, model)
    stagewise = _stagewise_plan(facts.num_layers)

    def reasoner(dtype: str, cache: bool):
        s = sessions[dtype]
        return s.reasoner(bench, default_config(s.loaded, header_cache=cache))

    r = {"bf16_nocache": reasoner("bfloat16", False), "fp32_nocache": reasoner("float32", False),
         "fp32_cache": reasoner("float32", True)}
    pipelines = {
        "bfloat16 batch 1, no header cache (previous default)": (r["bf16_nocache"], DENSE, 1),
        "float32 batch 1, no header cache": (r["fp32_nocache"], DENSE, 1),
        "float32 batch 1, header cache": (r["fp32_cache"], DENSE, 1),
        f"float32 batch {batch_size}, header cache": (r["fp32_cache"], DENSE, batch_size),
        "stage-wise plan, float32 batch 1, no header cache": (r["fp32_nocache"], stagewise, 1),
        "stage-wise plan, float32 batch 1, header cache": (r["fp32_cache"], stagewise, 1),
    }
    for reasoner_, plan, _ in pipelines.values():  # warm-up (fills the header caches)
        reasoner_.solve(items[0], plan)
    secs = {k: 0.0 for k in pipelines}
    preds: dict[str, list] = {k: [] for k in pipelines}
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        for name, (reasoner_, plan, batch) in pipelines.items():
            start = time.perf_counter()
            res = reasoner_.solve_batch(chunk, plan) if batch > 1 else [reasoner_.solve(q, plan) for q in chunk]
            secs[name] += time.perf_counter() - start
            preds[name] += [x.prediction for x in res]
        log(f"[throughput] {i + len(chunk)}/{len(items)} " + ", ".join(f"{v:.0f}s" for v in secs.values()))
    per_min = {k: 60 * len(items) / v for k, v in secs.items()}
    names = list(pipelines)
    return {"bench": bench, "n": len(items), "batch_size": batch_size, "questions_per_minute": per_min,
            "stagewise_plan": stagewise.to_dict(),
            "header_cache_gain_dense": per_min[names[2]] / per_min[names[1]],
            "header_cache_gain_stagewise": per_min[names[5]] / per_min[names[4]],
            "batched_vs_previous_default": per_min[names[3]] / per_min[names[0]],
            "batched_vs_float32_batch1": per_min[names[3]] / per_min[names[2]],
            "same_predictions_as_float32_batch1": {k: sum(a == b for a, b in zip(preds[names[2]], v)) / len(items)
                                                   for k, v in preds.items()}}


def measure_model(model: str, dtype: str | None, bench: str, limit: int, repeats: int, new_tokens: int) -> dict:
    session = Session.open(model, dtype=dtype)
    reasoner = session.reasoner(bench, default_config(session.loaded))
    prompt = reasoner.prompts.recall(reasoner.prompts.header(load_split(bench, "calib", limit=1)[0]))
    log(f"[speed] {model} {session.loaded.dtype}: decode tokens/s")
    out = {"model": model, "dtype": session.loaded.dtype,
           "decode": decode_tokens_per_second(session, prompt, new_tokens, repeats)}
    log(f"[speed] {model}: static skip plans")
    out["skip_plans"] = skip_plan_speedups(session, prompt, new_tokens, repeats)
    if limit:
        log(f"[speed] {model}: reasoner vs naive pipeline on {limit} items")
        out["reasoner_vs_naive"] = reasoner_vs_naive(session, bench, limit)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--dtypes", default="default", help="comma-separated: default, float32, bfloat16")
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--limit", type=int, default=10, help="reasoner items (0: skip that measurement)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default="results/executor.json")
    ap.add_argument("--throughput", action="store_true",
                    help="instead: questions/minute with and without the header cache and batching")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    if args.throughput:
        runs = [throughput(m, args.bench, args.limit, args.batch_size) for m in args.models.split(",")]
        doc = {"command": "python -m litestage_bench.studies.speed " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine_info(), "torch_threads": torch.get_num_threads(), "runs": runs}
        write_text_atomic(args.out, json.dumps(doc, indent=1))
        print(json.dumps(runs, indent=1))
        return 0
    runs = []
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            runs.append(measure_model(model, None if dtype == "default" else dtype, args.bench, args.limit,
                                      args.repeats, args.new_tokens))
            log(json.dumps(runs[-1], indent=1))
    doc = {"command": "python -m litestage_bench.studies.speed " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine_info(), "torch_threads": torch.get_num_threads(), "runs": runs}
    write_text_atomic(args.out, json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
