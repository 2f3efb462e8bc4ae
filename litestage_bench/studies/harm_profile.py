"""Ranking vs harm, without a budget search: how well the cosine importance predicts the damage of
skipping a sub-layer, and how single harms compound.

`python -m litestage_bench.studies.harm_profile --model M --bench B [--items 8] --out results/harm/M_B.json`
runs dense on the first `--items` calibration questions of the search's calibration subset (the same
questions `litestage-bench search --harm-profile` measures harm on), then
- the cosine importance of every sub-layer over their stage prefills, per stage and accumulated;
- every sub-layer skipped alone: KL(dense || skipped) of the next-token distributions over the stage
  prompts (`--stages`: all, or some, e.g. only the short Recall prompts for a slow model), and its Spearman correlation with the accumulated cosine ranking (and with each stage's own);
- the joint KL of the top-n cosine units beside the sum of their single KLs (`--joint`).
It is the affordable part of a search for slow models (the 1.5B): 2L + len(joint) prefill passes over
3 x items prompts, and no generation beyond the dense run. `--summary-only` rebuilds
`results/harm/summary.md` from the saved files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tabulate import tabulate

from ..core.errors import UserError
from ..engine.plan import STAGES, SkipPlan
from ..evaluation.benchmarks import load_split
from ..methods.calibration import (HarmMeter, StageTexts, accumulate, cosine_ranking, ranking_vs_harm, skip_set,
                                   sublayer_similarity)
from ..records.results import machine_info, write_text_atomic

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "results" / "harm"
SEARCH_LIMIT = 50  # the search's calibration subset; its first `items` questions are its harm questions


def measure(session, bench: str, n_items: int, joint_sizes: list[int], *, stages: tuple[str, ...] = STAGES,
            batch_size: int = 8, data_dir=None, log=print) -> dict:
    """The harm profile of one model on one benchmark's calibration questions."""
    from scipy.stats import spearmanr

    from ..evaluation.benchmarks import check_disjoint, check_items
    from ..evaluation.runner import default_config, evaluate_items

    started = time.perf_counter()
    items = check_items(load_split(bench, "calib", limit=SEARCH_LIMIT, data_dir=data_dir, seed=0)[:n_items],
                        bench, "calib", data_dir)
    check_disjoint(items, load_split(bench, "eval", data_dir=data_dir))
    name, ex = session.loaded.name, session.executor
    reasoner = session.reasoner(bench, default_config(session.loaded), data_dir)
    with reasoner.tracing() as trace:
        dense = evaluate_items(reasoner, SkipPlan(), {}, items, batch_size, f"harm {name} {bench} dense")
    if reasoner.header is None:
        raise UserError("the harm profile needs the shared-header cache", "do not disable header_cache")
    texts = StageTexts(reasoner.header.ids, trace)
    log(f"[harm] importance over {sum(len(texts.prompts(s)) for s in STAGES)} stage prompts")
    per_stage = sublayer_similarity(ex, texts, batch_size)
    scores = accumulate(per_stage)
    ranking = cosine_ranking(scores)
    harm = HarmMeter(ex, texts.header, [p for s in stages for p in texts.prompts(s, per_question=True)])
    log(f"[harm] {len(ranking)} single skips over {harm.tokens} tokens")
    singles = harm.single_harms(ranking, lambda m: log(f"[harm] {m}"))
    profile = ranking_vs_harm(ranking, singles, scores)
    harms = [singles[u] for u in ranking]
    by_stage = {s: float(spearmanr([-per_stage[s][k][j] for k, j in ranking], harms).statistic) for s in STAGES}
    joint = [{"top": n, "joint_kl": harm.kl(skip_set(ranking, n)), "sum_single_kl": sum(harms[:n])}
             for n in joint_sizes if n <= len(ranking)]
    return {
        "model": name, "bench": bench, "dtype": session.loaded.dtype, "threads": _threads(),
        "num_layers": ex.num_layers, "calibration": {"split": "calib", "n": len(items), "ids": [q.id for q in items]},
        "dense_accuracy": sum(r.correct for r in dense) / len(dense), "harm_stages": list(stages),
        "tokens": harm.tokens,
        "importance": per_stage, "accumulated": scores, "ranking": [list(u) for u in ranking],
        **profile, "spearman_by_stage": by_stage, "joint": joint,
        "cost": {"wall_seconds": time.perf_counter() - started, "harm_passes": harm.passes},
        "machine": machine_info(),
    }


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _unit(u: list) -> str:
    return f"{u[0]} {u[1]}"


def write_summary(out_dir: Path) -> Path:
    """One markdown table over every profile in `out_dir`."""
    rows = []
    for path in sorted(out_dir.glob("*.json")):
        r = json.loads(path.read_text())
        least = sorted(r["profile"], key=lambda p: p["kl"])[:3]
        joint = "; ".join(f"{j['top']}: {j['joint_kl']:.3f} / {j['sum_single_kl']:.3f}" for j in r["joint"])
        rows.append([r["model"], r["bench"], r["dtype"], r["calibration"]["n"],
                     ",".join(r.get("harm_stages", STAGES)), r["tokens"],
                     f"{r['spearman_dissimilarity_vs_kl']:.2f}",
                     " / ".join(f"{r['spearman_by_stage'][s]:.2f}" for s in STAGES),
                     ", ".join(f"{_unit(p['unit'])} ({p['kl']:.3f})" for p in least), joint,
                     f"{r['cost']['wall_seconds'] / 60:.1f}", f"`{r.get('command', '')}`"])
    table = tabulate(rows, headers=["model", "bench", "dtype", "questions", "KL over stages", "tokens", "Spearman (all stages)",
                                    "Spearman per stage R/A/S", "least harmful single skips (KL nats/token)",
                                    "top-n cosine: joint KL / sum of single KLs", "minutes", "command"],
                     tablefmt="github")
    md = ("# Ranking vs harm (single-skip KL vs cosine importance)\n\n"
          "KL(dense || skipped) of next-token distributions over the stage prompts of the calibration questions "
          "(tokens after the few-shot header), each sub-layer skipped alone; Spearman of the cosine dissimilarity "
          "(accumulated over stages, and each stage's own) with that KL. Joint: the top-n least important units by "
          "cosine skipped together, against the sum of their single KLs (super-additive when joint > sum).\n\n"
          f"{table}\n\nRebuild: `python -m litestage_bench.studies.harm_profile --summary-only`.\n")
    return write_text_atomic(out_dir / "summary.md", md)


def _sizes(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise UserError(f"--joint '{text}' is not a list of whole numbers", "write it as e.g. 2,4,8,16") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.harm_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--items", type=int, default=8, help="calibration questions (default 8, as the search)")
    ap.add_argument("--joint", default="2,4,8,16", help="top-n cosine sets whose joint KL is measured")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="stages whose prompts measure the KL (default all; `recall` is the cheapest)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", help="the profile's JSON file (default results/harm/MODEL_BENCH.json)")
    ap.add_argument("--summary-only", action="store_true", help="measure nothing: rebuild results/harm/summary.md")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.harm_profile " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        if not args.summary_only:
            if not args.model:
                raise UserError("--model is required", "name a model alias, e.g. --model smollm2-135m")
            joint = _sizes(args.joint)
            if args.items < 1 or any(n < 1 for n in joint):
                raise UserError("--items and --joint sizes must be >= 1", "e.g. --items 8 --joint 2,4,8")
            stages = tuple(s for s in args.stages.split(",") if s)
            if not stages or set(stages) - set(STAGES):
                raise UserError(f"--stages '{args.stages}' is not a list of stages", f"choose from {','.join(STAGES)}")
            out = Path(args.out) if args.out else DEFAULT_DIR / f"{args.model}_{args.bench}.json"
            from ..evaluation.runner import Session, log
            session = Session.open(args.model, dtype=args.dtype)
            result = measure(session, args.bench, args.items, joint, stages=stages, batch_size=args.batch_size,
                             data_dir=args.data_dir, log=log)
            write_text_atomic(out, json.dumps({**result, "command": command}, indent=1))
            print(f"[harm] {out}: Spearman {result['spearman_dissimilarity_vs_kl']:.2f}")
            write_summary(out.parent)
        else:
            write_summary(DEFAULT_DIR)
    except UserError as err:
        print(f"harm_profile: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
