"""What the baselines share: reading `k` and hyperparameters from the policy dict, checking a
policy against the method and the model, stage-agnostic plans, the calibration run of a search,
and the probes that measure the residual stream around sub-layers and whole layers.

Policy dict: `litestage-bench run --policy P --k K` hands the method the JSON file P with `k`
added (and `max_new_tokens` for methods that follow the stage caps). Methods without a search
need no file; a file given to them may set their hyperparameters (`{"method": "unified",
"phase": "decode"}`). Searches write `schema_version`, `method`, `model` and `num_layers`, which
the method checks before it builds a plan.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from litestage_bench.core.errors import UserError
from litestage_bench.core.schema import Checker
from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.plan import STAGES, SUBLAYERS, SkipPlan, SkipSet, StagePlan
from litestage_bench.evaluation.benchmarks import Question, check_disjoint, check_items, load_split
from litestage_bench.evaluation.header_cache import HeaderCache
from litestage_bench.methods.calibration import StageTexts, prefill_after_header
from litestage_bench.methods.registry import Method, ModelFacts
from litestage_bench.records.results import ItemResult, machine_info

POLICY_SCHEMA_VERSION = 1
# keys the CLI / policy loader put into a policy dict; anything else makes it a method's own file
CLI_KEYS = frozenset({"k", "max_new_tokens", "path", "early_exit_off"})
# "all": skip for prompt and generated tokens alike (removal / static skipping);
# "decode": prompts run dense, generated tokens skip (AdaSkip's decode-task experiments)
PHASES = ("all", "decode")


# ------------------------------------------------------------------------------------------------
# policy and k


def policy_fix(name: str) -> str:
    return (f"write one with `litestage-bench search --method {name} --bench BENCH --out P.json`, "
            f"then run `litestage-bench run --method {name} --policy P.json --k K`")


def own_policy(policy: dict[str, Any] | None, name: str, needs_search: bool) -> dict[str, Any]:
    """The method's policy dict ({} when none); UserError for a missing search policy or a
    policy of another method."""
    policy = dict(policy or {})
    where = policy.get("path", "the policy")
    if needs_search:
        if policy.get("method") is None and not set(policy) - CLI_KEYS:
            raise UserError(f"method '{name}' needs a policy file from its calibration search", policy_fix(name))
        if policy.get("method") != name or policy.get("schema_version") != POLICY_SCHEMA_VERSION:
            raise UserError(f"{where} is not a {name} policy (method {policy.get('method')!r}, schema "
                            f"{policy.get('schema_version')!r})", policy_fix(name))
    elif set(policy) - CLI_KEYS and policy.get("method") != name:
        raise UserError(f"{where} is a policy of method {policy.get('method')!r}, not '{name}'",
                        f"'{name}' needs no policy: drop --policy, or pass a file with \"method\": \"{name}\"")
    return policy


def read_k(policy: dict[str, Any], name: str, what: str) -> int:
    """`k` from the policy dict (the CLI's --k): a whole number >= 0."""
    if policy.get("k") is None:
        raise UserError(f"method '{name}' needs --k (the number of {what})",
                        "pass e.g. --k 4 (sweep k to compare methods at matched speedup)")
    k = policy["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise UserError(f"k={k!r} for method '{name}' is not a whole number >= 0", "pass e.g. --k 4")
    return k


def check_k(k: int, high: int, name: str, what: str, why: str = "") -> None:
    if k > high:
        raise UserError(f"k={k} for method '{name}' is out of range: at most {high} {what}{why}",
                        f"pass --k between 0 and {high}")


def check_policy_model(policy: dict[str, Any], name: str, model: str) -> None:
    if policy.get("model") != model:
        raise UserError(f"{name} policy {policy.get('path', '')} was calibrated on model {policy.get('model')!r}, "
                        f"not {model!r}", f"run `litestage-bench search --method {name} --model {model}` or run "
                        f"with --model {policy.get('model')}")


def check_policy_layers(policy: dict[str, Any], name: str, facts: ModelFacts) -> None:
    if policy.get("num_layers") != facts.num_layers:
        raise UserError(f"{name} policy {policy.get('path', '')} is for {policy.get('num_layers')} layers, the model "
                        f"has {facts.num_layers}", f"search a {name} policy for this model")


def layer_list(policy: dict[str, Any], key: str, name: str, length: int | None = None) -> list[int]:
    """A list of distinct layer indices of a search policy (all layers when `length` is given)."""
    layers, value = policy.get("num_layers"), policy.get(key)
    ok = (isinstance(value, list) and all(isinstance(j, int) and not isinstance(j, bool) for j in value)
          and isinstance(layers, int) and len(set(value)) == len(value) and all(0 <= j < layers for j in value)
          and (length is None or len(value) == length))
    if not ok:
        raise UserError(f"{policy.get('path', 'the policy')} has no valid '{key}' (distinct layers "
                        f"of 0..{layers - 1 if isinstance(layers, int) else '?'} expected)", policy_fix(name))
    return value


def checker(policy: dict[str, Any], name: str) -> Checker:
    """Type checks of a policy file, naming it and how to write a good one."""
    return Checker(str(policy.get("path", "the policy")), policy_fix(name))


def section(policy: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """An optional object of a search policy ("calibration", "options"): {} when absent."""
    return checker(policy, name).obj(policy.get(key), key, optional=True)


def choice(policy: dict[str, Any], key: str, default: Any, allowed: tuple, name: str) -> Any:
    value = policy.get(key, default)
    if value not in allowed:
        raise UserError(f"{name}: {key}={value!r} is not one of {list(allowed)}", f"set \"{key}\" to one of them")
    return value


def whole(policy: dict[str, Any], key: str, default: int, low: int, name: str) -> int:
    value = policy.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name}: {key}={value!r} is not a whole number >= {low}", f"set \"{key}\" to one")
    return value


def flag(policy: dict[str, Any], key: str, default: bool, name: str) -> bool:
    value = policy.get(key, default)
    if not isinstance(value, bool):
        raise UserError(f"{name}: {key}={value!r} is not true/false", f"set \"{key}\" to true or false")
    return value


# ------------------------------------------------------------------------------------------------
# methods


def phase_plan(skip: SkipSet, phase: str, **replacements: Any) -> StagePlan:
    """A static stage plan: `skip` for generated tokens, and for prompt tokens too when phase == "all"."""
    return StagePlan(prefill=skip if phase == "all" else SkipSet(), decode=skip, **replacements)


def uniform(stage_plan: StagePlan, name: str) -> SkipPlan:
    """The same (stage-agnostic) plan in all three stages; k = 0 gives dense."""
    return SkipPlan() if stage_plan.is_dense() else SkipPlan.uniform(stage_plan, STAGES, name)


class Baseline(Method):
    """A baseline with `k` from the policy dict and hyperparameters recorded by `describe()`.

    Subclasses set `name`, `unit` (what k counts), `reference`, `needs_search`, and implement
    `read_params` (hyperparameters, validated), `max_k` and `stage_plan`."""

    unit = "layers to skip"
    reference = ""
    needs_k = True  # the benchmark grid cannot run it without a k

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        self.policy = own_policy(policy, self.name, self.needs_search)
        self.k = read_k(self.policy, self.name, self.unit)
        self.params = self.read_params(self.policy)
        unknown = set(self.policy) - CLI_KEYS - {"method", "schema_version"} - set(self.params)
        if unknown and not self.needs_search:  # a search policy holds its findings besides the options
            raise UserError(f"unknown {self.name} option(s) {sorted(unknown)}",
                            f"use only {sorted(self.params)} (and \"method\")")
        self.details: dict[str, Any] = {}  # what plan() derived (skip sets, schedules), for describe()
        if self.needs_search:  # the layer count is known before the model loads: check k now
            layers = self.policy.get("num_layers")
            if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
                raise UserError(f"{self.policy.get('path', 'the policy')} has no valid num_layers ({layers!r})",
                                policy_fix(self.name))
            self.check_k(layers)

    def read_params(self, policy: dict[str, Any]) -> dict[str, Any]:
        return {}

    def max_k(self, num_layers: int) -> tuple[int, str]:
        """The largest k for this model, and why (for the error message)."""
        return num_layers - 1, " (layer 0 always runs)"

    def check_k(self, num_layers: int) -> None:
        high, why = self.max_k(num_layers)
        check_k(self.k, high, self.name, self.unit, why)

    def check_model(self, model: str) -> None:
        if self.needs_search:
            check_policy_model(self.policy, self.name, model)

    def plan(self, facts: ModelFacts) -> SkipPlan:
        if self.needs_search:
            self.check_model(facts.name)
            check_policy_layers(self.policy, self.name, facts)
        self.check_k(facts.num_layers)
        return self.build(facts.num_layers)

    def build(self, num_layers: int) -> SkipPlan:
        return uniform(self.stage_plan(num_layers), self.name)

    def stage_plan(self, num_layers: int) -> StagePlan:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        out = {"name": f"{self.name}-k{self.k}", "method": self.name, "k": self.k, "unit": self.unit,
               "params": dict(self.params), "reference": self.reference, **self.details}
        if self.policy.get("path"):
            out["policy"] = self.policy["path"]
        return out


def skip_layers_plan(layers: list[int], phase: str) -> StagePlan:
    return phase_plan(SkipSet.layers(layers), phase)


class FixedLayersBaseline(Baseline):
    """A rule-given set of whole layers skipped in every stage, for prompt and generated tokens
    ("all", the default) or generated tokens only ("decode"); subclasses implement `layers`."""

    def read_params(self, policy: dict[str, Any]) -> dict[str, Any]:
        return {"phase": choice(policy, "phase", "all", PHASES, self.name)}

    def layers(self, num_layers: int) -> list[int]:
        raise NotImplementedError

    def stage_plan(self, num_layers: int) -> StagePlan:
        layers = self.layers(num_layers)
        self.details = {"layers": layers}
        return skip_layers_plan(layers, self.params["phase"])


# ------------------------------------------------------------------------------------------------
# searches


@dataclass
class Calibration:
    """The calibration items, dense's answers on them and its stage texts."""

    items: list[Question]
    dense: list[ItemResult]
    texts: StageTexts
    ex: SkipExecutor
    started: float
    batch_size: int


def calibrate(session, bench: str, args, config, name: str, default_limit: int,
              log: Callable[[str], None]) -> Calibration:
    """Load only the calibration split (checked disjoint from evaluation), run the dense reasoner on
    it and keep every stage's prompts and outputs."""
    from litestage_bench.evaluation.runner import evaluate_items, seed_everything

    started = time.perf_counter()
    seed_everything(args.seed)
    items = check_items(load_split(bench, "calib", limit=args.limit or default_limit, data_dir=args.data_dir,
                                   seed=args.seed), bench, "calib", args.data_dir)
    check_disjoint(items, load_split(bench, "eval", data_dir=args.data_dir))
    reasoner = session.reasoner(bench, config, args.data_dir)
    log(f"[search] {name}: dense on {len(items)} calibration items of {bench}")
    with reasoner.tracing() as trace:
        dense = evaluate_items(reasoner, SkipPlan(), {}, items, args.batch_size, f"{name} {bench} dense")
    texts = StageTexts(reasoner.header.ids if reasoner.header else [], trace)
    if not texts.header:
        raise UserError("the search needs the shared-header cache", "do not disable header_cache for a search")
    return Calibration(items, dense, texts, session.executor, started, args.batch_size)


def policy_record(name: str, session, bench: str, config, cal: Calibration, command: str,
                  options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The policy file of a baseline's search: what it was calibrated on, its options, its findings."""
    acc = sum(r.correct for r in cal.dense) / len(cal.dense)
    return {"schema_version": POLICY_SCHEMA_VERSION, "method": name, "model": session.loaded.name,
            "num_layers": cal.ex.num_layers, "dtype": session.loaded.dtype, "bench": bench,
            "options": options, "reasoner_config": config.to_dict(),
            "calibration": {"split": "calib", "n": len(cal.items), "ids": [q.id for q in cal.items],
                            "dense_accuracy": acc, "header_tokens": len(cal.texts.header)},
            **fields,
            "search_cost": {"wall_seconds": time.perf_counter() - cal.started,
                            "stage_runs": len(STAGES) * math.ceil(len(cal.items) / cal.batch_size)},
            "machine": machine_info(), "command": command}


def chunks(seqs: list, size: int):
    for i in range(0, len(seqs), size):
        yield seqs[i:i + size]


def dense_prefills(ex: SkipExecutor, header: list[int], seqs: list[list[int]], probe, batch_size: int) -> None:
    """Dense prefill of every sequence (each starting with the header) from the header's cached KV,
    calling `probe` on every sub-layer: only the tokens after the header are measured."""
    cache = HeaderCache(ex, header, max_entries=1)
    for chunk in chunks(seqs, batch_size):
        prefill_after_header(ex, cache, chunk, StagePlan(), probe=probe)


# ------------------------------------------------------------------------------------------------
# probes (called by the executor for every executed sub-layer: layer, kind, before, after, valid)


def _row_means(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over each row's valid tokens (rows without any are dropped)."""
    counts = valid.sum(-1)
    has = counts > 0
    return torch.where(valid, values, torch.zeros_like(values)).sum(-1)[has] / counts[has]


class SublayerStats:
    """Per sub-layer, over the residual stream x before and y after it: mean cos(x, y) and mean
    norm ratio ||y|| / ||x|| (AdaSkip's importance and scale factor). Averaged like LiteStage's
    importance: per prompt over its tokens, then over prompts."""

    def __init__(self, num_layers: int) -> None:
        self.sums = {(m, k): torch.zeros(num_layers, dtype=torch.float64) for m in ("cos", "ratio") for k in SUBLAYERS}
        self.rows = {k: torch.zeros(num_layers, dtype=torch.float64) for k in SUBLAYERS}

    def __call__(self, layer: int, kind: str, before: torch.Tensor, after: torch.Tensor, valid: torch.Tensor) -> None:
        x, y = before.float(), after.float()
        cos = F.cosine_similarity(x, y, dim=-1)
        ratio = y.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
        self.sums["cos", kind][layer] += float(_row_means(cos, valid).double().sum())
        self.sums["ratio", kind][layer] += float(_row_means(ratio, valid).double().sum())
        self.rows[kind][layer] += int((valid.sum(-1) > 0).sum())

    def means(self, measure: str) -> dict[str, list[float]]:
        return {k: (self.sums[measure, k] / self.rows[k].clamp(min=1)).tolist() for k in SUBLAYERS}


class LayerCosine:
    """Per whole layer, mean cos(layer input, layer output) over all measured tokens (ShortGPT's
    expectation over tokens). The layer input is the stream before its attention sub-layer, the
    output the stream after its FFN: both before the final norm (unlike the last entry of
    transformers' `output_hidden_states`, which is normed)."""

    def __init__(self, num_layers: int) -> None:
        self.sums = torch.zeros(num_layers, dtype=torch.float64)
        self.tokens = torch.zeros(num_layers, dtype=torch.float64)
        self._inputs: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, kind: str, before: torch.Tensor, after: torch.Tensor, valid: torch.Tensor) -> None:
        if kind == "attn":
            self._inputs[layer] = before
            return
        cos = F.cosine_similarity(self._inputs.pop(layer).float(), after.float(), dim=-1)
        self.sums[layer] += float(torch.where(valid, cos, torch.zeros_like(cos)).double().sum())
        self.tokens[layer] += int(valid.sum())

    def means(self) -> list[float]:
        return (self.sums / self.tokens.clamp(min=1)).tolist()


def all_stage_texts(texts: StageTexts) -> list[list[int]]:
    """Every stage's prompt plus dense output (stage 2: one per option): perplexity-style calibration text."""
    return [t for s in STAGES for t in texts.texts(s)]


def all_stage_prompts(texts: StageTexts) -> list[list[int]]:
    """Every stage's prompt (stage 2: one per option): the prefills the served model sees."""
    return [p for s in STAGES for p in texts.prompts(s)]

