"""Run a method over a benchmark split: accuracy in batches, latency at batch 1, the record with its
comparison to dense."""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..engine.executor import SkipExecutor
from ..engine.method import Method, ModelFacts, model_facts
from ..engine.models import LoadedModel, load_model, weights_id
from ..engine.plan import DENSE, STAGES, SkipPlan
from ..records import metrics
from ..records.noise import compact, compare, exact_numerics, noise_floor_for
from ..records.results import ItemResult, ResultRecord, build_record, cpu_model, load_record
from ..records.throughput import throughput_summary
from ..records.timing import DEFAULT_ROUNDS, merge_rounds, with_latencies
from .benchmarks import Question, check_items, load_split, normalize_stem, subset
from .checkpoint import RunCheckpoint
from .throughput import chunks_of, time_chunks
from .demos import load_demos
from .reasoner import Callbacks, Reasoner, ReasonerConfig, StageMemo, select_demos

SEED = 0


def seed_everything(seed: int = SEED) -> None:
    """Greedy decoding is deterministic; seeds pin anything else (subsets, hypothesis-free code)."""
    random.seed(seed)
    torch.manual_seed(seed)


def default_config(loaded: LoadedModel, **overrides) -> ReasonerConfig:
    """The model's default reasoner settings (answer rule and chat use come from its spec)."""
    spec = loaded.spec
    cfg = ReasonerConfig(answer_rule=spec.default_answer_rule if spec else "letter",
                         chat=spec.use_chat_template if spec else True)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def check_device(device: str) -> str:
    """``UserError`` for a device name torch does not know or this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device '{device}'", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device '{device}' is not available: this machine has no CUDA GPU", "use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"device '{device}' is not available: this machine has {count} CUDA GPU(s)",
                            f"use cuda:0..cuda:{count - 1} or cpu")
    elif dev.type != "cpu":
        raise UserError(f"device '{device}' is not supported", "use cpu, cuda or cuda:N")
    return device


@dataclass
class Session:
    """A loaded model with its executor, ready to run reasoners on any benchmark."""

    loaded: LoadedModel
    executor: SkipExecutor

    @staticmethod
    def open(model: str, dtype: str | None = None, device: str = "cpu", numerics: str | None = None) -> "Session":
        check_device(device)
        loaded = load_model(model, dtype=dtype, device=device, numerics=numerics)
        return Session(loaded, SkipExecutor(loaded.model))

    def reasoner(self, bench: str, config: ReasonerConfig, data_dir=None) -> Reasoner:
        eval_stems = {normalize_stem(q.stem) for q in load_split(bench, "eval", data_dir=data_dir)}
        demos = select_demos(load_demos(bench, data_dir), config.shots, eval_stems)
        return Reasoner(self.executor, self.loaded.tokenizer, demos, config)


# When set (by the grid's pytest controller), progress lines go to this file, which the controller
# tails to its terminal: pytest captures a test's stderr, and xdist workers' output never shows.
PROGRESS_FILE_ENV = "LITESTAGE_PROGRESS_FILE"


def log(msg: str) -> None:
    path = os.environ.get(PROGRESS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:  # one short append per line: lines never interleave
            fh.write(msg + "\n")
        return
    print(msg, file=sys.stderr, flush=True)


DEFAULT_BATCH_SIZE = 8  # questions per batch for accuracy (batch-8 decode is several times faster per token)
DEFAULT_TIMED = 50  # seeded items timed at batch 1 for latency and speedup


def checked_plan(method: Method, facts: ModelFacts) -> SkipPlan:
    plan = method.plan(facts)
    for stage_plan in plan.stages.values():
        stage_plan.validate(facts.num_layers)
    return plan


def method_callbacks(method: Method) -> Callbacks:
    return {s: method.token_callback(s) for s in STAGES}


def run_items(reasoner: Reasoner, method: Method, facts: ModelFacts, items: list[Question],
              label: str = "", warmup: int = 1, progress: bool = True) -> list[ItemResult]:
    """Solve every item (batch 1) after `warmup` untimed questions; prints progress to stderr."""
    timed = time_items(reasoner, {"m": (checked_plan(method, facts), method_callbacks(method))}, items,
                       label, warmup=warmup, progress=progress, rounds=1)
    return timed["m"]


def _progress(label: str, done: int, total: int, results: list[ItemResult], start: float, solved: int) -> None:
    """`solved` of the `done` questions ran in this process; the rest were read back from a checkpoint,
    so they count towards `done` but not towards the seconds per question."""
    acc = sum(r.correct for r in results) / max(len(results), 1)
    if not solved:
        log(f"[{label}] {done}/{total} acc={acc:.3f} (read back from the checkpoint)")
        return
    per_question = (time.perf_counter() - start) / solved
    eta = per_question * (total - done)
    log(f"[{label}] {done}/{total} acc={acc:.3f} {per_question:.2f} s/question, eta {eta / 60:.1f} min")


def timed_phase(rounds: int) -> str:
    """The checkpoint phase of timed questions (rounds=1 reads checkpoints from before rounds)."""
    return "timed" if rounds == 1 else f"timed x{rounds} rounds"


def time_items(reasoner: Reasoner, pipelines: dict[str, tuple[SkipPlan, Callbacks]], items: list[Question],
               label: str = "", warmup: int = 1, progress: bool = True,
               checkpoint: RunCheckpoint | None = None, rounds: int = DEFAULT_ROUNDS,
               progress_every: int = 10, phase: str | None = None, quiet_for: float = 0.0) -> dict[str, list[ItemResult]]:
    """Batch-1 latency of each pipeline on the same items, interleaved: per question, `rounds`
    rounds in which every pipeline solves it back to back, the order alternating by question and
    round, so that drift of a shared machine hits every pipeline alike (`timing.py` pairs the rounds).
    `warmup` questions per pipeline (which also fill the header cache) are excluded. With a
    checkpoint, questions timed before an interruption are read back instead of re-timed (`phase`
    names them in the checkpoint: `run` adds the machine, so that another machine times them again).
    `quiet_for`: a progress line only after at least that many seconds since the last one."""
    for plan, callbacks in pipelines.values():
        for q in items[:warmup]:
            reasoner.solve(q, plan, callbacks)
    names = list(pipelines)
    out: dict[str, list[ItemResult]] = {name: [] for name in names}
    phase = phase or timed_phase(rounds)
    start, solved = time.perf_counter(), 0
    last_line = start
    for i, q in enumerate(items, 1):
        done = checkpoint.get(phase, q.id) if checkpoint else None
        if done is None:
            solved += 1
            per_round: dict[str, list[ItemResult]] = {name: [] for name in names}
            firsts: list[str] = []
            for r in range(rounds):
                order = names if (i + r) % 2 else names[::-1]
                firsts.append(order[0])
                for name in order:
                    per_round[name].append(reasoner.solve(q, *pipelines[name]))
            done = [merge_rounds(per_round[name], [f == name for f in firsts]) for name in names]
            if checkpoint:
                checkpoint.put(phase, q.id, done)
        for name, item in zip(names, done):
            out[name].append(item)
        if progress and (i % progress_every == 0 or i == len(items)) and time.perf_counter() - last_line >= quiet_for:
            _progress(f"{label} timed: {len(names)} pipelines x {rounds} rounds", i, len(items), out[names[0]], start,
                      solved)
            last_line = time.perf_counter()
    return out


def evaluate_items(reasoner: Reasoner, plan: SkipPlan, callbacks: Callbacks, items: list[Question],
                   batch_size: int = DEFAULT_BATCH_SIZE, label: str = "", progress: bool = True,
                   checkpoint: RunCheckpoint | None = None, phase: str = "batch",
                   memo: StageMemo | None = None, quiet_for: float = 0.0) -> list[ItemResult]:
    """Accuracy and outputs at throughput: `batch_size` questions per batch, no latency. With a
    checkpoint, batches finished before an interruption are read back (`phase` names the pipeline);
    a stage memo reuses stages unchanged since an earlier call (budget searches). `quiet_for`: a
    progress line only after at least that many seconds since the last one (or the start)."""
    results: list[ItemResult] = []
    start, solved = time.perf_counter(), 0
    last_line = start
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        key = ",".join(q.id for q in chunk)
        done = checkpoint.get(phase, key) if checkpoint else None
        if done is None:
            solved += len(chunk)
            began = time.perf_counter()
            done = reasoner.solve_batch(chunk, plan, callbacks, memo)
            if checkpoint:  # the batch's cost, so that a record spanning machines can say what it cost
                checkpoint.put(phase, key, done, {"seconds": time.perf_counter() - began, "cpu": cpu_model()})
        results += done
        if progress and time.perf_counter() - last_line >= quiet_for:
            _progress(f"{label} batch {batch_size}", len(results), len(items), results, start, solved)
            last_line = time.perf_counter()
    return results


def accuracy_cost(checkpoint: RunCheckpoint, phase: str = "batch") -> dict:
    """One-thread seconds of a run's accuracy batches per CPU they ran on, from its checkpoint (batches
    kept before their cost was are counted in `items_without_cost`)."""
    per_cpu: dict[str, dict] = {}
    without = 0
    for (p, key), items in checkpoint.entries.items():
        if p != phase:
            continue
        meta = checkpoint.meta.get((p, key))
        if not meta:
            without += len(items)
            continue
        entry = per_cpu.setdefault(str(meta.get("cpu")), {"items": 0, "seconds": 0.0})
        entry["items"] += len(items)
        entry["seconds"] += float(meta.get("seconds", 0.0))
    return {"per_cpu": per_cpu, "items_without_cost": without}


def chance_rate(bench: str, split: str, data_dir=None) -> float:
    """Accuracy of guessing: 1/#options, or for StrategyQA (yes/no, unbalanced) the split's
    majority-class rate."""
    questions = load_split(bench, split, data_dir=data_dir)
    if bench == "strategyqa":
        counts = Counter(q.answer for q in questions)
        return max(counts.values()) / len(questions)
    return sum(1 / len(q.labels) for q in questions) / len(questions)


def load_reference(path: str, *, model: str, bench: str, split: str, dtype: str, config: ReasonerConfig,
                   items: list[Question], numerics: str | None = None, method: str = "dense",
                   policy: dict | None = None) -> list[ItemResult]:
    """Per-item results from an earlier `run` with the same model, data, items and settings: dense's
    (`--dense-record`), or with `method` and its planned `policy`, the method's own (`--answers-from`)."""
    rec = load_record(path)
    rec_dtype = rec.dtype or rec.extra.get("dtype")
    want = {"model": model, "benchmark": bench, "split": split, "method": method, "dtype": dtype,
            "numerics": numerics or dtype}
    got = {"model": rec.model, "benchmark": rec.benchmark, "split": rec.split, "method": rec.method,
           "dtype": rec_dtype, "numerics": rec.numerics or rec_dtype}
    wrong = [f"{k} {got[k]!r} (need {v!r})" for k, v in want.items() if got[k] != v]
    if policy is not None:
        policy = json.loads(json.dumps(policy))  # as a record stores it (e.g. layer keys become strings)
        differ = sorted(k for k in {*policy, *rec.policy} if policy.get(k) != rec.policy.get(k))
        if differ:
            wrong.append(f"policy differs in {', '.join(differ)}")
    if rec.config != config.to_dict():
        wrong.append("reasoner settings differ")
    by_id = {it.id: it for it in rec.items}
    missing = [q.id for q in items if q.id not in by_id]
    if missing:
        wrong.append(f"{len(missing)} of the {len(items)} items missing (e.g. {missing[0]})")
    if wrong:
        raise UserError(f"{method} record {path} does not match this run: {'; '.join(wrong)}",
                        f"re-run {method} with the same --model/--bench/--limit/--dtype/--numerics/settings, "
                        f"or drop {'--dense-record' if method == 'dense' else '--answers-from'}")
    return [by_id[q.id] for q in items]


def _check_reproduced(records: dict[str, tuple[str | None, list[ItemResult] | None]],
                      clock: dict[str, list[ItemResult]]) -> None:
    """Answers read from earlier records stand only if this code reproduces them: every timed item's
    batch-1 stage outputs and prediction must equal the record's (exact numerics; otherwise, re-run
    the answers)."""
    for name, (path, items) in records.items():
        if items is None or name not in clock:
            continue
        changed = _changed(clock[name], items, costs=False)
        if changed:
            raise UserError(f"{len(changed)} of the {len(clock[name])} timed items' outputs differ from {path} "
                            f"(e.g. {changed[0]}): its answers are not this code's (or these numerics are not exact)",
                            "re-run without --answers-from, which recomputes every answer")


def _check_batch_rerun(reasoner: Reasoner, plan: SkipPlan, callbacks: Callbacks, items: list[Question],
                       timed_items: list[Question], batch_size: int, path: str, reused: list[ItemResult]) -> None:
    """Executed costs are counted per batch (a batch-dependent rule, such as AdaSkip's per-token FFN skip,
    runs for every row of a batch), so batch 1 need not match them: the batch that holds the first timed
    item runs again as the record's accuracy pass ran it, and its outputs and costs must equal the record's."""
    first = [q.id for q in items].index(timed_items[0].id)
    start = first // batch_size * batch_size
    rerun = evaluate_items(reasoner, plan, callbacks, items[start:start + batch_size], batch_size, progress=False)
    changed = _changed(rerun, reused, costs=True)
    if changed:
        raise UserError(f"{len(changed)} of the {len(rerun)} items of a re-run batch differ from {path} in outputs or "
                        f"executed costs (e.g. {changed[0]}): its answers or costs are not this code's",
                        "re-run without --answers-from, which recomputes every answer")


def _changed(got: list[ItemResult], reference: list[ItemResult], *, costs: bool) -> list[str]:
    """Ids of `got`'s items whose stage outputs or prediction (with `costs`, also executed costs) differ
    from the same items in `reference`."""
    by_id = {r.id: r for r in reference}
    return [t.id for t in got if compact(t)["outputs"] != compact(by_id[t.id])["outputs"]
            or t.prediction != by_id[t.id].prediction
            or (costs and not _same_costs(t.executed_cost_fraction, by_id[t.id].executed_cost_fraction))]


def _same_costs(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-9 for s in a)


def clock_label(session: Session) -> str:
    """What a timing depends on besides the code: the device, the CPU and the threads. Timed questions
    checkpointed under another label are timed again, never mixed into one record."""
    return f"{session.executor.device}, {cpu_model()}, {torch.get_num_threads()} threads"


def checkpoint_config(session: Session, **settings) -> dict:
    """Everything that decides a run's answers, as the checkpoint's fingerprint takes it: the weights
    by their id (no machine path), and the thread count only where the numerics are not exact
    across threads (float32 on a CPU is: its answers resume on any thread count and CPU)."""
    loaded = session.loaded
    device = str(session.executor.device)
    out = {"model": loaded.name, "weights": weights_id(loaded), "dtype": loaded.dtype, "numerics": loaded.numerics,
           **{k: v for k, v in settings.items() if k not in ("items", "method", "config")},
           "items": [q.id for q in settings["items"]], "method": settings["method"].describe(),
           "config": settings["config"].to_dict(), "device": device}
    if not exact_numerics(loaded.numerics, device):
        out["threads"] = torch.get_num_threads()
    return out


def run_benchmark(session: Session, bench: str, method: Method, *, split: str = "eval", limit: int | None = None,
                  config: ReasonerConfig, data_dir=None, command: str = "", seed: int = SEED,
                  one_step: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, timed: int | None = DEFAULT_TIMED,
                  dense_record: str | None = None, checkpoint_path: str | None = None,
                  rounds: int = DEFAULT_ROUNDS, answers_from: str | None = None,
                  throughput: tuple[int, int, int] | None = None, accuracy_only: bool = False) -> ResultRecord:
    """The whole `litestage-bench run`: one record for model x benchmark x method.

    Accuracy (and, for a non-dense method, dense's on the same items) is computed `batch_size`
    questions at a time; latency at batch 1 on a seeded subset of `timed` items (None: all),
    dense and method interleaved in this process, so that the speedup is measured side by side.

    With `answers_from` (an earlier record of this method, policy, items and settings), only the
    timing runs: the per-item answers are read from that record (and dense's from `dense_record`),
    and the timed items' batch-1 outputs must reproduce both records exactly, and one batch of the
    method, re-run at `batch_size`, that record's outputs and executed costs, or the run stops.

    `throughput` = (B, chunks, rounds): also the throughput at batch B of a non-dense method
    (`timing["throughput"]`, records/throughput.py): seeded chunks of B of the items, dense and the
    method solving each as one batch, interleaved; its answers must equal the accuracy pass's.

    `accuracy_only`: no timed items (no latency, no speedup); `time_together` times such records
    later, several against one dense."""
    seed_everything(seed)
    items = check_items(load_split(bench, split, limit=limit, data_dir=data_dir, seed=seed), bench, split, data_dir)
    if throughput and method.name != "dense":
        check_chunks(throughput, len(items))  # before hours of accuracy and latency, not after
    reasoner = session.reasoner(bench, config, data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    plan, callbacks = checked_plan(method, facts), method_callbacks(method)
    label = f"{session.loaded.name} {bench} {method.name}"
    is_dense = method.name == "dense"
    dense_items = None
    if not is_dense and dense_record:
        dense_items = load_reference(dense_record, model=session.loaded.name, bench=bench, split=split,
                                     dtype=session.loaded.dtype, config=config, items=items,
                                     numerics=session.loaded.numerics)
    reused = None
    if answers_from:
        reused = load_reference(answers_from, model=session.loaded.name, bench=bench, split=split,
                                dtype=session.loaded.dtype, config=config, items=items,
                                numerics=session.loaded.numerics, method=method.name, policy=method.describe())
    checkpoint = None
    if checkpoint_path:
        checkpoint = RunCheckpoint(checkpoint_path, checkpoint_config(
            session, bench=bench, split=split, items=items, method=method, config=config, batch_size=batch_size,
            timed=timed, seed=seed, dense_record=dense_record, answers_from=answers_from))
        if checkpoint.resumed:
            log(f"[{label}] resuming: {checkpoint.resumed} finished batches / timed questions in {checkpoint_path}")
        elif checkpoint.replaced:
            log(f"[{label}] removed {checkpoint_path}: the checkpoint of another run (other settings or items)")
    results = reused if reused is not None else evaluate_items(reasoner, plan, callbacks, items, batch_size, label,
                                                               checkpoint=checkpoint)
    if not is_dense and dense_items is None:
        dense_items = evaluate_items(reasoner, DENSE, {}, items, batch_size, f"{label}: dense reference",
                                     checkpoint=checkpoint, phase="dense batch")

    timed_items = [] if accuracy_only else subset(items, timed, seed)
    if reused is not None and timed_items:  # before the timing, so that a refused record fails fast
        _check_batch_rerun(reasoner, plan, callbacks, items, timed_items, batch_size, answers_from, results)
    pipelines = {"method": (plan, callbacks)}
    if not is_dense:
        pipelines["dense"] = (DENSE, {})
    phase = f"{timed_phase(rounds)} on {clock_label(session)}"
    resumed_timed = checkpoint.count(phase) if checkpoint else 0
    clock = time_items(reasoner, pipelines, timed_items, label, checkpoint=checkpoint, rounds=rounds, phase=phase)
    if reused is not None:
        _check_reproduced({"method": (answers_from, results), "dense": (dense_record, dense_items)}, clock)
    timing = _timing_fields(timed_items, rounds, batch_size, results, clock["method"], resumed_timed)
    if checkpoint is not None and reused is None:
        timing["accuracy_cost"] = accuracy_cost(checkpoint)
    elif reused is not None:
        _carry_accuracy_cost(timing, answers_from)
    extra = _extra(session, reasoner, seed, limit, dense_record, answers_from)
    if one_step:
        extra["one_step_accuracy"] = one_step_accuracy(reasoner, items, label)
    if throughput and not is_dense:
        timing["throughput"] = throughput_timing(reasoner, pipelines, items, results, throughput, seed, label,
                                                 checkpoint, clock_label(session))
    return _record(session, bench, split, method, config, with_latencies(results, clock["method"]),
                   None if dense_items is None else with_latencies(dense_items, clock["dense"]),
                   command=command, extra=extra, timing=timing, data_dir=data_dir)


def time_together(session: Session, bench: str, entries: list[tuple[str, Method, str]], *, split: str,
                  limit: int | None, config: ReasonerConfig, data_dir, seed: int, timed: int | None, rounds: int,
                  batch_size: int, dense_record: str, checkpoint_path: str,
                  commands: dict[str, str]) -> dict[str, ResultRecord]:
    """Batch-1 latency of several methods at once against one dense: entries (name, method, its
    accuracy-only record) of one model, benchmark, items and settings. Per timed question and round
    dense and every method solve it back to back (time_items: the order alternating), so k methods
    cost k + 1 solves instead of 2k; each method's speedup pairs its solves with dense's of the same
    round. As `run --answers-from`: answers are read from the records (dense's from `dense_record`) and
    must be reproduced, on the timed items and one re-run batch each. Per name, the record that
    `commands[name]` (that method's own `run --answers-from`) would write, timed here; timed
    questions are checkpointed per machine (clock_label), so an interrupted group continues."""
    seed_everything(seed)
    items = check_items(load_split(bench, split, limit=limit, data_dir=data_dir, seed=seed), bench, split, data_dir)
    reasoner = session.reasoner(bench, config, data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    loaded = session.loaded
    dense_items = load_reference(dense_record, model=loaded.name, bench=bench, split=split, dtype=loaded.dtype,
                                 config=config, items=items, numerics=loaded.numerics)
    timed_items = subset(items, timed, seed)
    pipelines: dict[str, tuple[SkipPlan, Callbacks]] = {"dense": (DENSE, {})}
    reused: dict[str, tuple[str, list[ItemResult]]] = {}
    for name, method, path in entries:
        pipelines[name] = (checked_plan(method, facts), method_callbacks(method))  # the policy as planned (layers)
        reused[name] = (path, load_reference(path, model=loaded.name, bench=bench, split=split, dtype=loaded.dtype,
                                             config=config, items=items, numerics=loaded.numerics,
                                             method=method.name, policy=method.describe()))
    for name, _, path in entries:  # before the timing, so that a refused group fails fast
        _check_batch_rerun(reasoner, *pipelines[name], items, timed_items, batch_size, path, reused[name][1])
    label = f"{loaded.name} {bench} " + " + ".join(m.name for _, m, _ in entries)
    checkpoint = RunCheckpoint(checkpoint_path, checkpoint_config(
        session, bench=bench, split=split, items=items, method=entries[0][1], config=config, batch_size=batch_size,
        timed=timed, seed=seed, dense_record=dense_record, answers_from=[p for _, _, p in entries],
        together=[m.describe() for _, m, _ in entries]))
    if checkpoint.resumed:
        log(f"[{label}] resuming: {checkpoint.resumed} timed questions in {checkpoint_path}")
    phase = f"{timed_phase(rounds)} on {clock_label(session)}"
    resumed_timed = checkpoint.count(phase)
    clock = time_items(reasoner, pipelines, timed_items, label, checkpoint=checkpoint, rounds=rounds, phase=phase)
    _check_reproduced({"dense": (dense_record, dense_items), **reused}, clock)
    records = {}
    for name, method, path in entries:
        results = reused[name][1]
        timing = {**_timing_fields(timed_items, rounds, batch_size, results, clock[name], resumed_timed),
                  "timed_with": [other for other, _, _ in entries if other != name]}
        _carry_accuracy_cost(timing, path)
        records[name] = _record(session, bench, split, method, config, with_latencies(results, clock[name]),
                                with_latencies(dense_items, clock["dense"]), command=commands[name],
                                extra=_extra(session, reasoner, seed, limit, dense_record, path), timing=timing,
                                data_dir=data_dir)
    return records  # the caller removes the checkpoint once the records are written


def _timing_fields(timed_items: list[Question], rounds: int, batch_size: int, results: list[ItemResult],
                   clocked: list[ItemResult], resumed_timed: int) -> dict:
    return {"timed_ids": [q.id for q in timed_items], "n_timed": len(timed_items), "batch_size_timed": 1,
            "accuracy_batch_size": batch_size, "warmup_questions": 1, "rounds": rounds,
            # how often the batch-1 (timed) run reproduced the batched one on the timed items
            "batch1_vs_batched": compare([compact(r) for r in results], [compact(r) for r in clocked]),
            "resumed_timed": resumed_timed}


def _carry_accuracy_cost(timing: dict, answers_from: str) -> None:
    """A record whose answers were read from an earlier one keeps what that one's accuracy pass cost."""
    cost = (load_record(answers_from).timing or {}).get("accuracy_cost")
    if cost:
        timing["accuracy_cost"] = cost


def _extra(session: Session, reasoner: Reasoner, seed: int, limit: int | None, dense_record: str | None,
           answers_from: str | None) -> dict:
    extra: dict = {"load_seconds": session.loaded.load_seconds, "load_from_cache": session.loaded.from_cache,
                   "dtype": session.loaded.dtype, "numerics": session.loaded.numerics, "seed": seed, "limit": limit,
                   "demos": [d.question.id for d in reasoner.prompts.demos]}
    if dense_record:
        extra["dense_record"] = dense_record
    if answers_from:
        extra["answers_from"] = {"record": answers_from, "command": load_record(answers_from).command}
    return extra


def _record(session: Session, bench: str, split: str, method: Method, config: ReasonerConfig,
            results: list[ItemResult], dense_items: list[ItemResult] | None, *, command: str, extra: dict,
            timing: dict, data_dir) -> ResultRecord:
    device = str(session.executor.device)
    return build_record(model=session.loaded.name, benchmark=bench, split=split, method=method.name,
                        policy=method.describe(), answer_rule=config.answer_rule, items=results,
                        command=command, config=config.to_dict(), speedup=1.0 if method.name == "dense" else None,
                        extra=extra, dense_items=dense_items, chance=chance_rate(bench, split, data_dir),
                        noise_floor=noise_floor_for(session.loaded.name, session.loaded.numerics, device),
                        timing=timing, dtype=session.loaded.dtype, numerics=session.loaded.numerics,
                        threads=torch.get_num_threads(), device=device)


def check_chunks(settings: tuple[int, int, int], n_items: int) -> None:
    batch, n_chunks, _ = settings
    if batch * n_chunks > n_items:
        raise UserError(f"--timing batch={batch} with --chunks {n_chunks} needs {batch * n_chunks} items, "
                        f"the run has {n_items}", "raise --limit, or lower --chunks or B")


def throughput_timing(reasoner: Reasoner, pipelines: dict, items: list[Question], results: list[ItemResult],
                      settings: tuple[int, int, int], seed: int, label: str,
                      checkpoint: RunCheckpoint | None = None, clock: str = "") -> dict:
    """The throughput summary at batch B (records/throughput.py) with every chunk round, of seeded
    chunks of B of the items; the chunks' answers must be the accuracy pass's (else the run stops)."""
    return group_throughput_timing(reasoner, pipelines["dense"], {"method": pipelines["method"]},
                                   items, {"method": results}, settings, seed, label, checkpoint, clock)["method"]


def group_throughput_timing(reasoner: Reasoner, dense: tuple, methods: dict[str, tuple], items: list[Question],
                            results: dict[str, list[ItemResult]], settings: tuple[int, int, int], seed: int,
                            label: str, checkpoint: RunCheckpoint | None = None, clock: str = "") -> dict[str, dict]:
    """Per method, its throughput summary against one dense timed in the same chunk rounds: each round
    solves the chunk with dense and every method back to back (the order reversed every other round),
    so k methods cost k + 1 solves per chunk round instead of 2k. Every chunk's answers must be the
    method's accuracy pass's (else the run stops). With a `checkpoint`, finished chunks are kept per
    `clock` (clock_label: the machine they were timed on) and read back by a rerun on the same one."""
    batch, n_chunks, rounds = settings
    check_chunks(settings, len(items))
    if "dense" in methods:
        raise ValueError("'dense' names the shared reference pipeline")
    chunks = chunks_of(subset(items, batch * n_chunks, seed), batch)
    measured = time_chunks(reasoner, {"dense": dense, **methods}, chunks, rounds, log=log, label=label,
                           checkpoint=checkpoint, phase=f"chunk rounds {batch}x{n_chunks}x{rounds} on {clock}")
    out = {}
    for name in methods:
        answers = {r.id: r.prediction for r in results[name]}
        differ = sorted({q.id for chunk, entries in zip(chunks, measured[name]) for entry in entries
                         for q, answer in zip(chunk, entry["answers"]) if answer != answers[q.id]})
        if differ:
            raise UserError(f"{name}: {len(differ)} items answered at batch {batch} differ from the accuracy pass "
                            f"(e.g. {differ[0]})", "use numerics that are exact across batch sizes (float32 on CPU)")
        summary = throughput_summary(measured["dense"], measured[name], batch)
        out[name] = {**summary, "chunk_ids": [[q.id for q in chunk] for chunk in chunks],
                     "chunk_rounds": {"dense": measured["dense"], "method": measured[name]}}
    return out


ONE_STEP_PROGRESS = 25  # questions between progress lines of the one-step pass


def one_step_accuracy(reasoner: Reasoner, items: list[Question], label: str = "") -> dict:
    """Accuracy of answering with no reasoning (letter and cloze), on the same items."""
    hits = {"letter": [], "cloze": []}
    start = time.perf_counter()
    for i, q in enumerate(items, 1):
        for rule, pred in reasoner.one_step(q).items():
            hits[rule].append(pred == q.answer)
        if i % ONE_STEP_PROGRESS == 0 or i == len(items):
            log(f"[{label} one-step] {i}/{len(items)} letter acc={sum(hits['letter']) / i:.3f} "
                f"{(time.perf_counter() - start) / i:.2f} s/question")
    scored = {rule: metrics.accuracy_ci95(v) for rule, v in hits.items()}
    return {rule: {"accuracy": acc, "ci95": ci} for rule, (acc, ci) in scored.items()}
