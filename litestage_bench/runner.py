"""Run a method over a benchmark split: load once, warm up, time each question, build the record."""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

import torch

from . import metrics
from .benchmarks import Question, load_split, normalize_stem
from .demos import load_demos
from .executor import SkipExecutor
from .methods import Method, ModelFacts
from .models import LoadedModel, load_model
from .reasoner import Reasoner, ReasonerConfig, select_demos
from .results import ItemResult, ResultRecord, build_record

SEED = 0


def seed_everything(seed: int = SEED) -> None:
    """Greedy decoding is deterministic; seeds pin anything else (subsets, hypothesis-free code)."""
    random.seed(seed)
    torch.manual_seed(seed)


def model_facts(executor: SkipExecutor, name: str) -> ModelFacts:
    arch = executor.arch
    return ModelFacts(name=name, num_layers=arch.num_layers, attn_flops=tuple(arch.attn_flops),
                      ffn_flops=tuple(arch.ffn_flops))


def default_config(loaded: LoadedModel, **overrides) -> ReasonerConfig:
    """The model's default reasoner settings (answer rule and chat use come from its spec)."""
    spec = loaded.spec
    cfg = ReasonerConfig(answer_rule=spec.default_answer_rule if spec else "letter",
                         chat=spec.use_chat_template if spec else True)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg


@dataclass
class Session:
    """A loaded model with its executor, ready to run reasoners on any benchmark."""

    loaded: LoadedModel
    executor: SkipExecutor

    @staticmethod
    def open(model: str, dtype: str | None = None, device: str = "cpu") -> "Session":
        loaded = load_model(model, dtype=dtype, device=device)
        return Session(loaded, SkipExecutor(loaded.model))

    def reasoner(self, bench: str, config: ReasonerConfig, data_dir=None) -> Reasoner:
        eval_stems = {normalize_stem(q.stem) for q in load_split(bench, "eval", data_dir=data_dir)}
        demos = select_demos(load_demos(bench, data_dir), config.shots, eval_stems)
        return Reasoner(self.executor, self.loaded.tokenizer, demos, config)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_items(reasoner: Reasoner, method: Method, facts: ModelFacts, items: list[Question],
              label: str = "", warmup: int = 1, progress: bool = True) -> list[ItemResult]:
    """Solve every item (batch 1) after `warmup` untimed questions; prints progress to stderr."""
    plan = method.plan(facts)
    for stage_plan in plan.stages.values():
        stage_plan.validate(facts.num_layers)
    callbacks = {s: method.token_callback(s) for s in ("recall", "analyze", "summarize")}
    for q in items[:warmup]:
        reasoner.solve(q, plan, callbacks)
    results: list[ItemResult] = []
    start = time.perf_counter()
    for i, q in enumerate(items, 1):
        results.append(reasoner.solve(q, plan, callbacks))
        if progress and (i % 10 == 0 or i == len(items)):
            acc = sum(r.correct for r in results) / len(results)
            elapsed = time.perf_counter() - start
            eta = elapsed / i * (len(items) - i)
            log(f"[{label}] {i}/{len(items)} acc={acc:.3f} {elapsed / i:.2f} s/question, eta {eta / 60:.1f} min")
    return results


def run_benchmark(session: Session, bench: str, method: Method, *, split: str = "eval", limit: int | None = None,
                  config: ReasonerConfig, data_dir=None, command: str = "", seed: int = SEED,
                  one_step: bool = False) -> ResultRecord:
    """The whole `litestage-bench run`: one record for model x benchmark x method."""
    seed_everything(seed)
    items = load_split(bench, split, limit=limit, data_dir=data_dir, seed=seed)
    reasoner = session.reasoner(bench, config, data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    label = f"{session.loaded.name} {bench} {method.name}"
    results = run_items(reasoner, method, facts, items, label)
    extra: dict = {"load_seconds": session.loaded.load_seconds, "load_from_cache": session.loaded.from_cache,
                   "dtype": session.loaded.dtype, "seed": seed, "limit": limit,
                   "demos": [d.question.id for d in reasoner.prompts.demos]}
    if one_step:
        extra["one_step_accuracy"] = one_step_accuracy(reasoner, items)
    return build_record(model=session.loaded.name, benchmark=bench, split=split, method=method.name,
                        policy=method.describe(), answer_rule=config.answer_rule, items=results,
                        command=command, config=config.to_dict(),
                        speedup=1.0 if method.name == "dense" else None, extra=extra)


def one_step_accuracy(reasoner: Reasoner, items: list[Question]) -> dict:
    """Accuracy of answering with no reasoning (letter and cloze), on the same items."""
    hits = {"letter": [], "cloze": []}
    for q in items:
        for rule, pred in reasoner.one_step(q).items():
            hits[rule].append(pred == q.answer)
    scored = {rule: metrics.accuracy_ci95(v) for rule, v in hits.items()}
    return {rule: {"accuracy": acc, "ci95": ci} for rule, (acc, ci) in scored.items()}
