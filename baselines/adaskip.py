"""AdaSkip (He et al., AAAI 2025, arXiv 2501.02336; code ASISys/AdaSkip): sub-layer skipping from
calibrated input/output similarities, with scale compensation and a decode-time FFN extension.

Calibration (`litestage-bench search --method adaskip`): for every attention and FFN sub-layer,
over the dense prefills of the calibration prompts, the mean cosine cos(x, y) and the mean norm
ratio ||y|| / ||x|| of the residual stream x before and y after it. Stage-agnostic: every stage's
prompt (stage 2: one per option) is one calibration request, pooled; the mean is per prompt over
its tokens after the shared few-shot header, then over prompts (LiteStage's averaging).
Run (`--policy P --k K`), the same plan in all three stages:
- the K sub-layers of highest similarity are skipped; a skipped sub-layer outputs its input times
  its calibrated mean norm ratio (the executor's attn_scale / ffn_scale);
- decode extension (plan.DynamicFFN): every FFN not skipped statically is a candidate; each sequence
  averages cos(h, h + FFN(h)) of the candidates over its first `warmup_steps` decode steps, then skips
  those whose mean >= the K-th largest prefill similarity (also with its norm-ratio scale).
Defaults from the reference: 20 calibration requests, 20 warm-up decode steps (the reference sweeps
K in {8, 12, 16} of 64 sub-layers). Suite decision: `phase` "all" (default: prompt and generated
tokens skip the static set, as in the end-to-end runs) or "decode" (prompts dense, the decode-task
runs). Note the stage caps: with 20 warm-up steps, Summarize (16 tokens) never leaves warm-up.
"""
from __future__ import annotations

from typing import Any

from litestage_bench.core.errors import UserError
from litestage_bench.engine.plan import SUBLAYERS, DynamicFFN, StagePlan
from litestage_bench.methods.calibration import skip_set
from litestage_bench.methods.registry import register, register_search

from .common import (PHASES, Baseline, SublayerStats, all_stage_prompts, calibrate, checker, choice, dense_prefills,
                     flag, phase_plan, policy_fix, policy_record, section, whole)

DEFAULT_LIMIT = 20  # the reference calibrates on its first 20 requests
WARMUP_STEPS = 20  # the reference's decode statistics window


def sublayer_ranking(similarity: dict[str, list[float]]) -> list[tuple[str, int]]:
    """All 2L sub-layers, highest similarity (least important) first; ties keep (layer, attn, ffn) order."""
    units = [(kind, j) for j in range(len(similarity["attn"])) for kind in SUBLAYERS]
    return sorted(units, key=lambda u: -similarity[u[0]][u[1]])


def adaskip_stage_plan(ranking: list[tuple[str, int]], similarity: dict[str, list[float]],
                       norm_ratio: dict[str, list[float]], k: int, phase: str = "all", decode_ffn: bool = True,
                       warmup_steps: int = WARMUP_STEPS, scale: bool = True) -> StagePlan:
    if k == 0:
        return StagePlan()
    skip = skip_set(ranking, k)
    kind, j = ranking[k - 1]
    threshold = similarity[kind][j]  # the k-th largest prefill similarity
    num_layers = len(similarity["attn"])
    candidates = frozenset(range(num_layers)) - skip.ffn if decode_ffn else frozenset()
    dynamic = DynamicFFN(candidates, threshold, warmup_steps) if candidates else None
    attn_scale = {i: norm_ratio["attn"][i] for i in sorted(skip.attn)} if scale else {}
    ffn_scale = {i: norm_ratio["ffn"][i] for i in sorted(skip.ffn | candidates)} if scale else {}
    return phase_plan(skip, phase, attn_scale=attn_scale, ffn_scale=ffn_scale, dynamic_ffn=dynamic)


@register("adaskip")
class AdaSkip(Baseline):
    name = "adaskip"
    needs_search = True
    unit = "sub-layers to skip (attention + FFN)"
    reference = "He et al., AAAI 2025, arXiv 2501.02336; code ASISys/AdaSkip"

    def read_params(self, policy: dict[str, Any]) -> dict[str, Any]:
        layers = policy.get("num_layers")
        check = checker(policy, self.name)
        for i, pair in enumerate(check.lst(policy.get("ranking"), "ranking")):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise check.fail(f"ranking[{i}]", "a pair [\"attn\" or \"ffn\", layer]", pair)
            check.one_of(pair[0], f"ranking[{i}][0]", SUBLAYERS)
            check.layers([pair[1]], f"ranking[{i}][1]", layers if isinstance(layers, int) else None)
        for key in ("similarity", "norm_ratio"):
            for sub in SUBLAYERS:
                values = check.lst(check.obj(policy.get(key), key).get(sub), f"{key}.{sub}")
                for j, x in enumerate(values):
                    check.number(x, f"{key}.{sub}[{j}]", finite=False)
        try:
            self.ranking = [(str(kind), int(j)) for kind, j in policy["ranking"]]
            self.similarity = {k: [float(x) for x in policy["similarity"][k]] for k in SUBLAYERS}
            self.norm_ratio = {k: [float(x) for x in policy["norm_ratio"][k]] for k in SUBLAYERS}
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{policy.get('path', 'the policy')} is malformed ({err!r})", policy_fix(self.name)) from err
        if len(self.ranking) != 2 * (layers or 0) or any(len(v) != layers for v in self.similarity.values()):
            raise UserError(f"{policy.get('path', 'the policy')} does not rank 2 x {layers} sub-layers",
                            policy_fix(self.name))
        return {"phase": choice(policy, "phase", "all", PHASES, self.name),
                "decode_ffn": flag(policy, "decode_ffn", True, self.name),
                "warmup_steps": whole(policy, "warmup_steps", WARMUP_STEPS, 0, self.name),
                "scale": flag(policy, "scale", True, self.name),
                "calibration": section(policy, "calibration", self.name).get("n")}

    def max_k(self, num_layers: int) -> tuple[int, str]:
        return 2 * num_layers, " (2 sub-layers per layer)"

    def stage_plan(self, num_layers: int) -> StagePlan:
        p = self.params
        plan = adaskip_stage_plan(self.ranking, self.similarity, self.norm_ratio, self.k, p["phase"],
                                  p["decode_ffn"], p["warmup_steps"], p["scale"])
        dyn = plan.dynamic_ffn
        self.details = {"skip": plan.decode.to_dict(), "attn_scale": plan.attn_scale,
                        "ffn_scale": {i: plan.ffn_scale[i] for i in sorted(plan.decode.ffn) if i in plan.ffn_scale},
                        "decode_ffn": dyn.to_dict() if dyn else None}
        return plan


@register_search("adaskip")
def search(session, bench: str, args, config, command: str, log) -> dict:
    cal = calibrate(session, bench, args, config, "adaskip", DEFAULT_LIMIT, log)
    prompts = all_stage_prompts(cal.texts)
    log(f"[search] adaskip: sub-layer similarity and norm ratio over {len(prompts)} dense stage prefills")
    stats = SublayerStats(cal.ex.num_layers)
    dense_prefills(cal.ex, cal.texts.header, prompts, stats, args.batch_size)
    similarity, norm_ratio = stats.means("cos"), stats.means("ratio")
    options = {"limit": len(cal.items), "seed": args.seed, "batch_size": args.batch_size,
               "requests": "every stage prompt (stage 2: one per option), tokens after the shared header"}
    return policy_record("adaskip", session, bench, config, cal, command, options,
                         similarity=similarity, norm_ratio=norm_ratio,
                         ranking=[list(u) for u in sublayer_ranking(similarity)],
                         phase="all", decode_ffn=True, warmup_steps=WARMUP_STEPS, scale=True)
