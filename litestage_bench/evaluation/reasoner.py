"""The multi-stage reasoner (TinyThinker: Recall -> Analyze per option -> Summarize) on the executor.

Every method runs through the reasoner: the method only supplies the ``SkipPlan`` (and optional
token callbacks), so speed and accuracy differ only by what is skipped. ``solve`` answers one
question at batch 1 and times it (the paper's latency); ``solve_batch`` answers several questions
together for accuracy at throughput (no latency). Both run the same code:

- stage 2 prefills each question's question+recall prefix once and decodes its options from it,
  all options of all questions as one batch;
- a stage whose plan carries a ``Draft`` computes dense and decodes self-speculatively
  (``engine/speculative.py``: the rows draft and verify together, each keeping its own accepted
  prefix); its items record the drafting per stage;
- a stage continues the previous stage's cache, cut back per row to the common prefix, when both
  compute identical KV entries (``_start``); else it starts from a copy of the shared few-shot
  header's cache (``HeaderCache``) and prefills the rest of its prompt under its own plan.
Outputs are equal up to the dtype's rounding across batch sizes (tests, results/numerics/).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from ..engine.early_exit import ConfidenceExit, ExitRule, TraceRecorder, exit_cut, fed_count
from ..engine.executor import BlockClock, CostMeter, Generation, SkipExecutor, TokenCallback, synchronize
from ..engine.kvcache import SkipKVCache
from ..engine.plan import STAGES, SkipPlan, StagePlan
from ..engine.speculative import SpeculativeGeneration, SpeculativeStats, generate_drafted
from ..records.fidelity import check_rule
from ..records.results import ItemResult
from . import answers
from .benchmarks import Question, normalize_stem
from .demos import Demo
from .header_cache import HeaderCache, shared_header_ids
from .prompts import PromptBuilder, StopTokens, common_prefix_length

# Per-stage generation caps, chosen by measurement (README, "Choosing the defaults").
DEFAULT_MAX_NEW_TOKENS = {"recall": 48, "analyze": 32, "summarize": 16}

Callbacks = dict[str, TokenCallback | None]


@dataclass
class ReasonerConfig:
    """Everything that shapes the reasoner's prompts and decoding."""

    shots: int = 1
    chat: bool = True
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    answer_rule: str = "letter"
    share_prefix: bool = True  # stage 2: prefill question+recall once, decode options from it
    batch_options: bool = True  # stage 2: decode all options as one batch (else one at a time)
    reuse_kv: bool = True  # continue the previous stage's cache when both stages skip the same
    header_cache: bool = True  # start every stage from the shared few-shot header's cached KV
    one_step: bool = False  # also score a one-step (no reasoning) letter/cloze answer, untimed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _HeldCache:
    """An earlier stage's cache, the token ids each of its rows holds, and how they were computed."""

    ids: list[list[int]]
    cache: SkipKVCache
    signature: tuple | None


@dataclass
class _StageRun:
    """One stage's results for a batch of questions: per question its content (recall ids, option ->
    analysis ids, or summary ids) and generated tokens; the batch's cost and wall time."""

    content: list
    tokens: list[int]
    cost: CostMeter
    seconds: float = 0.0
    scored: list | None = None  # summarize: per question (predictions by rule, option scores)
    speculative: list[dict] | None = None  # drafted stages: per question SpeculativeStats.summary()
    blocks: BlockClock | None = None  # timed runs: the multi-token forwards (prefill, answer scoring)
    computed: int | None = None  # the batch's decode row-steps (Generation.computed_tokens)
    # a memo-backed exit-off run's generation (StageMemo.exit_trace): per row its tokens and window
    # means (TraceRecorder) and the decode cost per live row-step, what its early-exit runs derive from
    trace: list[dict] | None = None
    step_cost: CostMeter | None = None


class StageMemo:
    """Stage results kept across calls (a budget search re-runs the same questions under plans that
    differ in one stage): a stage is reused when its own plan and callback, and every earlier
    stage's, are unchanged. Callbacks are told apart by their `memo_key` (or identity).

    `exit_trace` (window, confidence), set only where the numerics are exact: an untimed recall or
    analyze run under a static plan is computed with a ``TraceRecorder`` when it has no exit rule;
    inside ``deriving(stage)``, that stage's run under an exit rule of the same window and
    confidence is derived from that exit-off run (``Reasoner._derived_run``) instead of generated:
    an early-exit threshold sweep then generates its stage once. (Outside it an exit rule's run is
    computed: deriving it would first generate the longer exit-off run.) `hits`: runs reused;
    `misses`: runs computed; `derived`: runs derived."""

    def __init__(self, exit_trace: tuple[int, str] | None = None) -> None:
        self._runs: dict[tuple, _StageRun] = {}
        self.hits = 0
        self.misses = 0
        self.derived = 0
        self.exit_trace = exit_trace
        self.derive_stage: str | None = None

    @contextmanager
    def deriving(self, stage: str) -> Iterator[None]:
        """Within the block, the stage's exit-rule runs are derived (where `exit_trace` allows)."""
        self.derive_stage = stage
        try:
            yield
        finally:
            self.derive_stage = None

    @staticmethod
    def stage_key(stage: str, plan: SkipPlan, callbacks: Callbacks) -> tuple:
        callback = callbacks.get(stage)
        cb_key = None if callback is None else getattr(callback, "memo_key", id(callback))
        return (stage, repr(plan.for_stage(stage).to_dict()), cb_key)

    def get(self, stage: str, key: tuple) -> _StageRun | None:
        """The kept run, counted as a hit (a miss when there is none: it is computed)."""
        run = self._runs.get((stage, key))
        self.hits += run is not None
        self.misses += run is None
        return run

    def peek(self, stage: str, key: tuple) -> _StageRun | None:
        return self._runs.get((stage, key))

    def put(self, stage: str, key: tuple, run: _StageRun) -> None:
        self._runs[(stage, key)] = run


def _step_cost(g: Generation) -> CostMeter | None:
    """The decode cost per live row-step of a generation (None where not counted apart)."""
    if g.decode_cost is None:
        return None
    steps = sum(len(g.fed_tokens(row)) for row in range(len(g.tokens)))
    return CostMeter(g.decode_cost.executed / steps, g.decode_cost.total / steps) if steps else CostMeter()


def _drafting(g: Generation, owner) -> list[dict] | None:
    """Per question, the summed drafting stats of its rows (`owner[row]`: the row's question);
    None for a generation that drafted nothing."""
    if not isinstance(g, SpeculativeGeneration):
        return None
    owner = list(owner)
    per = [SpeculativeStats() for _ in range(max(owner) + 1)]
    for row, question in enumerate(owner):
        per[question].add(g.row_stats[row])
    return [p.summary() for p in per]


def select_demos(demos: list[Demo], shots: int, exclude_stems: set[str]) -> list[Demo]:
    """The first `shots` demos whose question is not an evaluation question (no leakage)."""
    return [d for d in demos if normalize_stem(d.question.stem) not in exclude_stems][:shots]


class Reasoner:
    """Runs questions through the three stages under a skip plan."""

    def __init__(self, executor: SkipExecutor, tokenizer, demos: list[Demo], config: ReasonerConfig) -> None:
        self.ex = executor
        self.tok = tokenizer
        self.cfg = config
        check_rule(config.answer_rule)
        self.prompts = PromptBuilder(tokenizer, config.chat, demos)
        self.stops = StopTokens.for_tokenizer(tokenizer)
        self.pad_id = tokenizer.pad_token_id or 0
        self.header = HeaderCache(executor, shared_header_ids(self.prompts)) if config.header_cache else None
        self.trace: dict[str, list[tuple]] | None = None  # see tracing()

    # --- building blocks ---------------------------------------------------------------------------
    def _generate(self, inputs, plan: StagePlan, stage: str, callbacks: Callbacks, prefix=None, cache=None,
                  keep_finished: bool = False) -> Generation:
        if plan.draft is not None:
            if callbacks.get(stage) is not None:
                raise ValueError(f"stage {stage}: a drafted (lossless) stage takes no token callbacks")
            return generate_drafted(self.ex, inputs, plan.draft, self.cfg.max_new_tokens[stage],
                                    self.stops.for_stage(stage), prefix=prefix, cache=cache, pad_id=self.pad_id)
        return self.ex.generate(inputs, plan, self.cfg.max_new_tokens[stage], self.stops.for_stage(stage),
                                prefix=prefix, cache=cache, on_token=callbacks.get(stage), pad_id=self.pad_id,
                                keep_finished=keep_finished)

    def _content(self, g: Generation, row: int) -> list[int]:
        return self.prompts.stage_content(g.tokens[row], g.stopped[row])

    def _start(self, held: "_HeldCache | None", plan: StagePlan, stage: str, prompts: list[list[int]],
               meter: CostMeter, need_one: bool = True) -> tuple[SkipKVCache | None, list[int]]:
        """The cache a stage continues (one row per prompt) and how many prompt ids it holds per row.

        The previous stage's cache, cut back per row to its common prefix with the prompt, when that
        is exact: every token in it was computed with this stage's skips (equal uniform signatures:
        dense, or a static plan shared by the stages). Else copies of the shared header's cache, else
        nothing (None: prefill from scratch). `need_one`: leave at least one prompt id to feed."""
        sig = plan.uniform_signature()
        if self.cfg.reuse_kv and held is not None and sig is not None and sig == held.signature:
            counts = []
            for had, ids in zip(held.ids, prompts):
                n = common_prefix_length(had, ids)
                counts.append(min(n, len(ids) - 1) if need_one else n)
            held.cache.keep_first(counts)
            return held.cache, counts
        if self.header is not None and all(self.header.covers(p) for p in prompts):
            cache, header_cost = self.header.copies(plan, self.cfg.max_new_tokens[stage], len(prompts))
            for _ in prompts:  # charged per question, so cost fractions do not depend on the cache
                meter.add(header_cost)
            return cache, [len(self.header.ids)] * len(prompts)
        return None, [0] * len(prompts)

    def _options(self, suffixes: list[list[int]], owner: list[int], cache: SkipKVCache, plan: StagePlan,
                 callbacks: Callbacks) -> Generation:
        """Stage 2: every option row continues its question's prefix (cache row owner[i]); all rows
        decode as one batch, or (`batch_options=False`) one at a time."""
        if self.cfg.batch_options:
            rows = cache.select(torch.tensor(owner, device=self.ex.device))
            return self._generate(suffixes, plan, "analyze", callbacks, cache=rows)
        parts = [self._generate([suffix], plan, "analyze", callbacks,
                                cache=cache.select(torch.tensor([o], device=self.ex.device)))
                 for suffix, o in zip(suffixes, owner)]
        cost = CostMeter()
        for g in parts:
            cost.add(g.cost)
        counted = [g.computed_tokens for g in parts]
        joined = dict(tokens=[g.tokens[0] for g in parts], stopped=[g.stopped[0] for g in parts],
                      seconds=sum(g.seconds for g in parts), cost=cost,
                      computed_tokens=None if None in counted else sum(counted))
        if plan.draft is not None:
            return SpeculativeGeneration(**joined, row_stats=[s for g in parts for s in g.row_stats])
        return Generation(**joined)

    # --- the three stages ------------------------------------------------------------------------------
    def solve(self, q: Question, plan: SkipPlan, callbacks: Callbacks | None = None,
              memo: "StageMemo | None" = None) -> ItemResult:
        """Answer one question at batch 1; latencies are wall time with the device synchronised."""
        return self._solve([q], plan, callbacks or {}, timed=True, memo=memo)[0]

    def solve_batch(self, qs: list[Question], plan: SkipPlan, callbacks: Callbacks | None = None,
                    memo: "StageMemo | None" = None) -> list[ItemResult]:
        """Answer several questions together (accuracy at throughput); items carry no latency, and
        executed-cost fractions are the batch's (equal per item for plans without per-token rules)."""
        return self._solve(list(qs), plan, callbacks or {}, timed=False, memo=memo)

    def time_batch(self, qs: list[Question], plan: SkipPlan,
                   callbacks: Callbacks | None = None) -> tuple[list[ItemResult], dict[str, dict]]:
        """Answer several questions as one batch, timed (throughput): the items (no per-item latency:
        they share every step) and per stage the batch's wall seconds, generated tokens, computed tokens
        (decode row-steps, finished rows kept in the batch included; None where not counted, e.g. a
        drafted stage) and executed-cost fraction."""
        runs = self._stage_runs(list(qs), plan, callbacks or {}, timed=True)
        items = [self._item(q, i, runs, timed=False) for i, q in enumerate(qs)]
        stages = {s: {"seconds": runs[s].seconds, "generated": sum(runs[s].tokens), "computed": runs[s].computed,
                      "cost_fraction": runs[s].cost.fraction} for s in STAGES}
        return items, stages

    def _solve(self, qs: list[Question], plan: SkipPlan, callbacks: Callbacks, timed: bool,
               memo: "StageMemo | None" = None) -> list[ItemResult]:
        runs = self._stage_runs(qs, plan, callbacks, timed, memo)
        return [self._item(q, i, runs, timed) for i, q in enumerate(qs)]

    def _stage_runs(self, qs: list[Question], plan: SkipPlan, callbacks: Callbacks, timed: bool,
                    memo: "StageMemo | None" = None) -> dict[str, "_StageRun"]:
        """The three stages in order. With a `memo`, a stage whose own plan and callback and whose
        earlier stages' are unchanged since an earlier call on the same questions is taken from it
        (outputs, tokens, cost and time as measured then); the next stage then starts from the
        header cache, which float32 makes equal to continuing the stage's cache (tests)."""
        headers = [self.prompts.header(q) for q in qs]
        runs: dict[str, _StageRun] = {}
        held = None
        chain: tuple = ()
        for stage in STAGES:
            chain += (memo.stage_key(stage, plan, callbacks),) if memo is not None else ()
            key = (tuple(q.id for q in qs), timed, chain)
            mode = self._exit_trace_mode(stage, plan.for_stage(stage), callbacks.get(stage), timed, memo)
            if mode == "derive":
                hit = memo.peek(stage, key)
                memo.hits += hit is not None
                if hit is None:
                    hit = self._derived_run(stage, qs, headers, runs, plan, callbacks, chain[:-1], memo)
                    memo.put(stage, key, hit)
            else:
                hit = memo.get(stage, key) if memo is not None else None
            if hit is not None:
                runs[stage], held = hit, None
                continue
            record = memo.exit_trace if mode == "record" else None
            runs[stage], held = self._computed_run(stage, qs, headers, runs, plan.for_stage(stage), callbacks, held,
                                                   timed, record)
            if memo is not None:
                memo.put(stage, key, runs[stage])
        return runs

    def _computed_run(self, stage: str, qs: list[Question], headers: list[list[int]], runs: dict[str, "_StageRun"],
                      plan: StagePlan, callbacks: Callbacks, held: "_HeldCache | None", timed: bool,
                      record: tuple[int, str] | None = None) -> tuple["_StageRun", "_HeldCache | None"]:
        """One stage run, computed; `record` (window, confidence): with a TraceRecorder as the stage's
        callback, its rows kept in the run's `trace`."""
        recorder = TraceRecorder(*record) if record is not None else None
        if recorder is not None:
            callbacks = {**callbacks, stage: recorder}
        blocks = self.ex.block_clock = BlockClock() if timed else None
        begin = time.perf_counter()
        try:
            run, held = self._run_stage(stage, qs, headers, runs, plan, callbacks, held)
            synchronize(self.ex.device)
        finally:
            self.ex.block_clock = None
        run.seconds = time.perf_counter() - begin
        run.blocks = blocks
        if recorder is not None:
            run.trace = recorder.rows(0)
        return run, held

    def _exit_trace_mode(self, stage: str, plan: StagePlan, callback, timed: bool,
                         memo: "StageMemo | None") -> str | None:
        """"record" (an exit-off run that keeps its trace), "derive" (an exit rule's run taken from
        that trace) or None (computed as usual): see StageMemo. Summarize is not derived (its answer
        scoring continues the generation's cache), nor a stage whose decode steps may differ in
        cost (a schedule, a per-token FFN rule, drafting) or whose options decode one at a time."""
        if memo is None or memo.exit_trace is None or timed or stage == "summarize":
            return None
        if plan.schedule or plan.dynamic_ffn is not None or plan.draft is not None:
            return None
        if stage == "analyze" and not self.cfg.batch_options:
            return None
        if callback is None:
            return "record"
        if (stage == memo.derive_stage and isinstance(callback, ConfidenceExit)
                and (callback.rule.window, callback.rule.confidence) == memo.exit_trace):
            return "derive"
        return None

    def _derived_run(self, stage: str, qs: list[Question], headers: list[list[int]], runs: dict[str, "_StageRun"],
                     plan: SkipPlan, callbacks: Callbacks, earlier: tuple, memo: "StageMemo") -> "_StageRun":
        """The stage's run under its exit rule, derived from the exit-off run of the same plan and
        earlier stages (`earlier`: their memo keys), which is computed (with its trace) unless kept."""
        off_key = (tuple(q.id for q in qs), False, earlier + (memo.stage_key(stage, plan, {}),))
        off = memo.peek(stage, off_key)
        if off is None or off.trace is None:
            off, _ = self._computed_run(stage, qs, headers, runs, plan.for_stage(stage), {**callbacks, stage: None},
                                        None, False, memo.exit_trace)
            memo.put(stage, off_key, off)
            memo.misses += 1
        memo.derived += 1
        return self._cut_run(stage, qs, off, callbacks[stage].rule)

    def _cut_run(self, stage: str, qs: list[Question], off: "_StageRun", rule: ExitRule) -> "_StageRun":
        """`off`'s rows cut where `rule` halts them (exit_cut), and its cost less the decode steps they
        no longer take (each costs `off.step_cost` under a static plan)."""
        stops = self.stops.for_stage(stage)
        cuts = [exit_cut(row, rule.threshold, stops) for row in off.trace]
        whole = [exit_cut(row, -math.inf, stops) for row in off.trace]
        saved = sum(fed_count(*w) for w in whole) - sum(fed_count(*c) for c in cuts)
        cost = CostMeter(off.cost.executed - saved * off.step_cost.executed,
                         off.cost.total - saved * off.step_cost.total)
        P = self.prompts
        texts = [P.as_sentence(P.stage_content(tokens, how)) for tokens, how in cuts]
        if stage == "recall":
            return _StageRun(texts, [len(tokens) for tokens, _ in cuts], cost)
        owner = [i for i, q in enumerate(qs) for _ in q.labels]
        labels = [label for q in qs for label in q.labels]
        analyses: list[dict[str, list[int]]] = [{} for _ in qs]
        tokens = [0] * len(qs)
        for row, (o, label) in enumerate(zip(owner, labels)):
            analyses[o][label] = texts[row]
            tokens[o] += len(cuts[row][0])
        return _StageRun(analyses, tokens, cost)

    def _run_stage(self, stage: str, qs: list[Question], headers: list[list[int]], runs: dict[str, "_StageRun"],
                   plan: StagePlan, callbacks: Callbacks, held: "_HeldCache | None"):
        if stage == "recall":
            return self._recall(qs, headers, plan, callbacks)
        if stage == "analyze":
            return self._analyze(qs, headers, runs["recall"].content, plan, callbacks, held)
        return self._summarize(qs, headers, runs["recall"].content, runs["analyze"].content, plan, callbacks, held)

    def _recall(self, qs, headers, plan: StagePlan, callbacks: Callbacks) -> tuple["_StageRun", "_HeldCache"]:
        P, cost = self.prompts, CostMeter()
        prompts = [P.recall(h) for h in headers]
        cache, start = self._start(None, plan, "recall", prompts, cost)
        # keep finished rows: the next stage may continue every row's cache
        g = self._generate([p[n:] for p, n in zip(prompts, start)], plan, "recall", callbacks, cache=cache,
                           keep_finished=True)
        cost.add(g.cost)
        recalls = [P.as_sentence(self._content(g, i)) for i in range(len(qs))]
        self._trace("recall", [q.id for q in qs], prompts, [self._content(g, i) for i in range(len(qs))])
        held = _HeldCache([p + g.fed_tokens(i) for i, p in enumerate(prompts)], g.cache, plan.uniform_signature())
        return _StageRun(recalls, [len(t) for t in g.tokens], cost, speculative=_drafting(g, range(len(qs))),
                         computed=g.computed_tokens, step_cost=_step_cost(g)), held

    def _analyze(self, qs, headers, recalls, plan: StagePlan, callbacks: Callbacks,
                 held: "_HeldCache | None") -> tuple["_StageRun", "_HeldCache | None"]:
        P, cost = self.prompts, CostMeter()
        prefixes = [P.analyze_prefix(h, r) for h, r in zip(headers, recalls)]  # question + recall, shared by options
        owner = [i for i, q in enumerate(qs) for _ in q.labels]  # question of each option row
        labels = [label for q in qs for label in q.labels]
        suffixes = [P.analyze_suffix(label) for label in labels]
        if self.cfg.share_prefix:
            cache, start = self._start(held, plan, "analyze", prefixes, cost, need_one=False)
            if cache is None:
                cache = self.ex.new_cache(len(qs))
            self.ex.prefill(cache, [p[n:] for p, n in zip(prefixes, start)], plan,
                            self.cfg.max_new_tokens["analyze"], cost, pad_id=self.pad_id)
            g = self._options(suffixes, owner, cache, plan, callbacks)
            held = _HeldCache(prefixes, cache, plan.uniform_signature())
        else:  # every option prefills its whole prompt (the reference for prefix sharing)
            g = self._generate([prefixes[o] + s for o, s in zip(owner, suffixes)], plan, "analyze", callbacks)
            held = None
        cost.add(g.cost)
        analyses: list[dict[str, list[int]]] = [{} for _ in qs]
        for row, (o, label) in enumerate(zip(owner, labels)):
            analyses[o][label] = P.as_sentence(self._content(g, row))
        self._trace("analyze", [qs[o].id for o in owner], [prefixes[o] + s for o, s in zip(owner, suffixes)],
                    [self._content(g, row) for row in range(len(owner))])
        tokens = [sum(len(g.tokens[r]) for r, o in enumerate(owner) if o == i) for i in range(len(qs))]
        return _StageRun(analyses, tokens, cost, speculative=_drafting(g, owner), computed=g.computed_tokens,
                         step_cost=_step_cost(g)), held

    def _summarize(self, qs, headers, recalls, analyses, plan: StagePlan, callbacks: Callbacks,
                   held: "_HeldCache | None") -> tuple["_StageRun", None]:
        P, cost = self.prompts, CostMeter()
        prompts = [P.summarize(h, r, a, q.labels) for h, r, a, q in zip(headers, recalls, analyses, qs)]
        cache, start = self._start(held, plan, "summarize", prompts, cost)
        g = self._generate([p[n:] for p, n in zip(prompts, start)], plan, "summarize", callbacks, cache=cache,
                           keep_finished=True)
        summaries = [self._content(g, i) for i in range(len(qs))]
        self._trace("summarize", [q.id for q in qs], prompts, summaries)
        scored = self._score(qs, g, summaries, plan, cost)
        cost.add(g.cost)
        return _StageRun(summaries, [len(t) for t in g.tokens], cost, scored=scored,
                         speculative=_drafting(g, range(len(qs))), computed=g.computed_tokens), None

    def _trace(self, stage: str, ids: list[str], prompts: list[list[int]], outputs: list[list[int]]) -> None:
        if self.trace is not None:
            self.trace.setdefault(stage, []).extend(zip(ids, prompts, outputs))

    @contextmanager
    def tracing(self) -> Iterator[dict[str, list[tuple]]]:
        """Within the block, every stage run that is computed (not taken from a memo) adds its
        (question id, prompt ids, generated content ids) to the yielded dict, per stage; stage 2
        has an entry per option. Pass a fresh memo (or none) to trace every stage."""
        self.trace = {}
        try:
            yield self.trace
        finally:
            self.trace = None

    # --- answers -------------------------------------------------------------------------------------
    def _item(self, q: Question, i: int, runs: dict[str, "_StageRun"], timed: bool) -> ItemResult:
        recall, analyses, summary = (runs[s].content[i] for s in STAGES)
        predictions, scores = runs["summarize"].scored[i]
        prediction, rule = answers.decide(self.cfg.answer_rule, predictions)
        decode = self.tok.decode
        stage_latency = {s: runs[s].seconds for s in STAGES} if timed else {}
        blocks = {s: runs[s].blocks for s in STAGES if timed and runs[s].blocks is not None}
        return ItemResult(
            id=q.id, answer=q.answer, prediction=prediction, rule=rule, correct=prediction == q.answer,
            latency_s=sum(stage_latency.values()) if timed else math.nan, stage_latency_s=stage_latency,
            tokens={s: runs[s].tokens[i] for s in STAGES},
            outputs={"recall": decode(recall),
                     "analyze": " ".join(f"For option {lab}, {decode(a).strip()}" for lab, a in analyses.items()),
                     "summarize": decode(summary)},
            predictions_by_rule=predictions, option_scores=scores,
            executed_cost_fraction={s: runs[s].cost.fraction for s in STAGES},
            prefill_s={s: b.seconds for s, b in blocks.items()},
            prefill_tokens={s: b.tokens for s, b in blocks.items()},
            speculative={s: runs[s].speculative[i] for s in STAGES if runs[s].speculative is not None},
        )

    def _score(self, qs: list[Question], g3: Generation, summaries: list[list[int]], plan: StagePlan,
               meter: CostMeter) -> list[tuple[dict[str, str | None], dict[str, list[float]]]]:
        """Per-rule predictions and option scores after each Summarize text, under stage 3's plan.

        Row i of g3.cache holds stage 3's prompt and the generated ids that were fed back; the
        rest of the Summarize content is fed here, before ` So the answer is` (shared by both
        constrained rules)."""
        contexts = [summary[len(g3.fed_tokens(i)):] + self.prompts.ids(" So the answer is")
                    for i, summary in enumerate(summaries)]
        first = self.ex.extend(g3.cache, contexts, plan, meter, logits="last", pad_id=self.pad_id)[:, -1]
        constrained = self._constrained(qs, g3.cache, first, plan, meter)
        return [({"regex": answers.regex_answer(self.tok.decode(summary), q.labels), **preds}, scores)
                for q, summary, (preds, scores) in zip(qs, summaries, constrained)]

    def _constrained(self, qs: list[Question], cache: SkipKVCache, first: torch.Tensor, plan: StagePlan,
                     meter: CostMeter) -> list[tuple[dict[str, str], dict[str, list[float]]]]:
        """`cloze` and `letter` predictions and option scores from a cache whose row i ends at
        ` So the answer is` for question i (`first[i]`: its next-token logits). The cache is left
        extended by ` option`."""
        P = self.prompts
        owner = [i for i, q in enumerate(qs) for _ in q.options]
        options = [P.ids(f" {text}") for q in qs for text in q.options]
        rows = cache.select(torch.tensor(owner, device=self.ex.device))
        block = self.ex.extend(rows, options, plan, meter, pad_id=self.pad_id)
        nxt = self.ex.extend(cache, [P.ids(" option")] * len(qs), plan, meter, logits="last", pad_id=self.pad_id)
        out, row = [], 0
        for i, q in enumerate(qs):
            k = len(q.options)
            logprobs = answers.option_logprobs(first[i], block[row:row + k], options[row:row + k])
            row += k
            letter_ids = P.letter_ids(q.labels)
            out.append(({"letter": answers.letter_answer(nxt[i, -1], letter_ids, q.labels),
                         "cloze": answers.cloze_answer(logprobs, q.labels)},
                        {"letter": nxt[i, -1, letter_ids].tolist(), "cloze": logprobs}))
        return out

    def one_step(self, q: Question) -> dict[str, str]:
        """Dense one-step answers with no reasoning: letter and cloze right after the question."""
        return self.one_step_scored(q)[0]

    @torch.inference_mode()
    def one_step_scored(self, q: Question) -> tuple[dict[str, str], dict]:
        """one_step's answers and option scores; the prompt continues a copy of the shared header's
        cache (the few-shot demonstrations: most of the prompt), as the stages do."""
        base = self.prompts.header(q) + self.prompts.ids("Summarize: So the answer is")
        dense, meter = StagePlan(), CostMeter()
        cache, start = self._start(None, dense, "summarize", [base], meter)
        cache = cache if cache is not None else self.ex.new_cache(1)
        first = self.ex.extend(cache, [base[start[0]:]], dense, meter, logits="last", pad_id=self.pad_id)[:, -1]
        return self._constrained([q], cache, first, dense, meter)[0]
