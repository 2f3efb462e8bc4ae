"""Acceptance of self-speculative decoding on a real model (engine/speculative.py), batch 1.

Drafts with the top-n sub-layers of a LiteStage policy's ranking (n swept), verifies dense, and
prints per draft: acceptance rate, accepted drafts and tokens per verify step, draft / verify
seconds, wall time vs. dense greedy, and whether the tokens equal dense's (they must).
Prompts: `{question block}\\nRecall:` of evaluation items (no demos: a measurement of agreement
between draft and full model, not of reasoning quality).

    python scripts/speculative_acceptance.py --model smollm2-135m --bench obqa --limit 5 \\
        --policy results/policies/smollm2-135m_obqa_litestage.json --skips 2,4,8,12 --k 4
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.models import load_model
from litestage_bench.engine.plan import SkipSet, StagePlan
from litestage_bench.engine.speculative import generate_speculative
from litestage_bench.evaluation.benchmarks import load_split
from litestage_bench.evaluation.prompts import end_token_ids, question_block


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bench", default="obqa")
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--skips", default="2,4,8,12")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--min-confidence", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-stop", action="store_true", help="ignore end tokens: always max-new-tokens")
    args = ap.parse_args()
    loaded = load_model(args.model, dtype="float32", device=args.device)
    ex, tok = SkipExecutor(loaded.model), loaded.tokenizer
    stop = frozenset() if args.no_stop else end_token_ids(tok)
    ranking = json.load(open(args.policy))["ranking"]
    prompts = [tok(question_block(q) + "\nRecall:")["input_ids"] for q in load_split(args.bench, "eval", args.limit)]
    dense_s, dense_tokens = 0.0, []
    for p in prompts:
        start = time.perf_counter()
        dense_tokens.append(ex.generate([p], StagePlan(), args.max_new_tokens, stop_ids=stop).tokens[0])
        dense_s += time.perf_counter() - start
    print(f"dense: {sum(map(len, dense_tokens))} tokens, {dense_s:.2f} s")
    for n in (int(x) for x in args.skips.split(",")):
        top = ranking[:n]
        draft = StagePlan.static(SkipSet.of([i for s, i in top if s == "attn"], [i for s, i in top if s == "ffn"]))
        tot = dict(drafted=0, accepted=0, steps=0, draft_s=0.0, verify_s=0.0, wall=0.0, equal=0)
        for p, ref in zip(prompts, dense_tokens):
            g = generate_speculative(ex, p, draft, args.max_new_tokens, k=args.k, stop_ids=stop,
                                     min_confidence=args.min_confidence)
            s = g.stats
            tot["drafted"] += s.drafted
            tot["accepted"] += s.accepted
            tot["steps"] += s.verify_steps
            tot["draft_s"] += s.draft_seconds
            tot["verify_s"] += s.verify_seconds
            tot["wall"] += g.seconds
            tot["equal"] += g.tokens[0] == ref
        rate = tot["accepted"] / max(tot["drafted"], 1)
        per_step = tot["accepted"] / max(tot["steps"], 1)
        print(f"draft skips top-{n} {draft.decode.to_dict()}: acceptance {rate:.3f}, accepted/step {per_step:.2f}, "
              f"tokens/step {per_step + 1:.2f}, draft {tot['draft_s']:.2f} s, verify {tot['verify_s']:.2f} s, "
              f"wall {tot['wall']:.2f} s ({dense_s / tot['wall']:.2f}x dense), equal {tot['equal']}/{len(prompts)}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
