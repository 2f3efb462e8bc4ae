"""The multi-stage reasoner (TinyThinker: Recall -> Analyze per option -> Summarize) on the executor.

Every method runs through the reasoner: the method only supplies the ``SkipPlan`` (and optional
token callbacks), so speed and accuracy differ only by what is skipped. ``solve`` answers one
question at batch 1 and times it (the paper's latency); ``solve_batch`` answers several questions
together for accuracy at throughput (no latency). Both run the same code:

- stage 2 prefills each question's question+recall prefix once and decodes its options from it,
  all options of all questions as one batch;
- a stage continues the previous stage's cache, cut back per row to the common prefix, when both
  compute identical KV entries (``_start``); else it starts from a copy of the shared few-shot
  header's cache (``HeaderCache``) and prefills the rest of its prompt under its own plan.
Outputs are equal up to the dtype's rounding across batch sizes (tests, results/numerics/).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from . import answers
from .benchmarks import Question, normalize_stem
from .demos import Demo
from .executor import CostMeter, Generation, SkipExecutor, TokenCallback, synchronize
from .header_cache import HeaderCache, shared_header_ids
from .kvcache import SkipKVCache
from .plan import SkipPlan, StagePlan
from .prompts import STAGES, PromptBuilder, StopTokens, common_prefix_length
from .results import ItemResult

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


def select_demos(demos: list[Demo], shots: int, exclude_stems: set[str]) -> list[Demo]:
    """The first `shots` demos whose question is not an evaluation question (no leakage)."""
    return [d for d in demos if normalize_stem(d.question.stem) not in exclude_stems][:shots]


class Reasoner:
    """Runs questions through the three stages under a skip plan."""

    def __init__(self, executor: SkipExecutor, tokenizer, demos: list[Demo], config: ReasonerConfig) -> None:
        self.ex = executor
        self.tok = tokenizer
        self.cfg = config
        answers.check_rule(config.answer_rule)
        self.prompts = PromptBuilder(tokenizer, config.chat, demos)
        self.stops = StopTokens.for_tokenizer(tokenizer)
        self.pad_id = tokenizer.pad_token_id or 0
        self.header = HeaderCache(executor, shared_header_ids(self.prompts)) if config.header_cache else None

    # --- building blocks ---------------------------------------------------------------------------
    def _generate(self, inputs, plan: StagePlan, stage: str, callbacks: Callbacks, prefix=None, cache=None,
                  keep_finished: bool = False) -> Generation:
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
        return Generation(tokens=[g.tokens[0] for g in parts], stopped=[g.stopped[0] for g in parts],
                          seconds=sum(g.seconds for g in parts), cost=cost)

    # --- the three stages ------------------------------------------------------------------------------
    def solve(self, q: Question, plan: SkipPlan, callbacks: Callbacks | None = None) -> ItemResult:
        """Answer one question at batch 1; latencies are wall time with the device synchronised."""
        return self._solve([q], plan, callbacks or {}, timed=True)[0]

    def solve_batch(self, qs: list[Question], plan: SkipPlan, callbacks: Callbacks | None = None) -> list[ItemResult]:
        """Answer several questions together (accuracy at throughput); items carry no latency, and
        executed-cost fractions are the batch's (equal per item for plans without per-token rules)."""
        return self._solve(list(qs), plan, callbacks or {}, timed=False)

    def _solve(self, qs: list[Question], plan: SkipPlan, callbacks: Callbacks, timed: bool) -> list[ItemResult]:
        P = self.prompts
        cost = {s: CostMeter() for s in STAGES}
        clock = [time.perf_counter()]

        def lap() -> None:
            synchronize(self.ex.device)
            clock.append(time.perf_counter())

        headers = [P.header(q) for q in qs]
        recall_plan = plan.for_stage("recall")
        prompts1 = [P.recall(h) for h in headers]
        cache, start = self._start(None, recall_plan, "recall", prompts1, cost["recall"])
        # keep finished rows: the next stage may continue every row's cache
        g1 = self._generate([p[n:] for p, n in zip(prompts1, start)], recall_plan, "recall", callbacks,
                            cache=cache, keep_finished=True)
        recalls = [P.as_sentence(self._content(g1, i)) for i in range(len(qs))]
        held = _HeldCache([p + g1.fed_tokens(i) for i, p in enumerate(prompts1)], g1.cache,
                          recall_plan.uniform_signature())
        lap()

        analyze_plan = plan.for_stage("analyze")
        prefixes = [P.analyze_prefix(h, r) for h, r in zip(headers, recalls)]  # question + recall, shared by options
        owner = [i for i, q in enumerate(qs) for _ in q.labels]  # question of each option row
        labels = [label for q in qs for label in q.labels]
        suffixes = [P.analyze_suffix(label) for label in labels]
        if self.cfg.share_prefix:
            cache, start = self._start(held, analyze_plan, "analyze", prefixes, cost["analyze"], need_one=False)
            if cache is None:
                cache = self.ex.new_cache(len(qs))
            self.ex.prefill(cache, [p[n:] for p, n in zip(prefixes, start)], analyze_plan,
                            self.cfg.max_new_tokens["analyze"], cost["analyze"], pad_id=self.pad_id)
            g2 = self._options(suffixes, owner, cache, analyze_plan, callbacks)
            held = _HeldCache(prefixes, cache, analyze_plan.uniform_signature())
        else:  # every option prefills its whole prompt (the reference for prefix sharing)
            g2 = self._generate([prefixes[o] + s for o, s in zip(owner, suffixes)], analyze_plan, "analyze",
                                callbacks)
            held = None
        analyses: list[dict[str, list[int]]] = [{} for _ in qs]
        for row, (o, label) in enumerate(zip(owner, labels)):
            analyses[o][label] = P.as_sentence(self._content(g2, row))
        lap()

        summarize_plan = plan.for_stage("summarize")
        prompts3 = [P.summarize(h, r, a, q.labels) for h, r, a, q in zip(headers, recalls, analyses, qs)]
        cache, start = self._start(held, summarize_plan, "summarize", prompts3, cost["summarize"])
        g3 = self._generate([p[n:] for p, n in zip(prompts3, start)], summarize_plan, "summarize", callbacks,
                            cache=cache, keep_finished=True)
        summaries = [self._content(g3, i) for i in range(len(qs))]
        scored = self._score(qs, g3, summaries, summarize_plan, cost["summarize"])
        lap()

        for stage, g in (("recall", g1), ("analyze", g2), ("summarize", g3)):
            cost[stage].add(g.cost)
        out = []
        for i, q in enumerate(qs):
            tokens = {"recall": len(g1.tokens[i]), "analyze": sum(len(g2.tokens[r]) for r, o in enumerate(owner) if o == i),
                      "summarize": len(g3.tokens[i])}
            latency = {}
            if timed:
                latency = {"latency": clock[3] - clock[0],
                           "stage_latency": {s: clock[k + 1] - clock[k] for k, s in enumerate(STAGES)}}
            out.append(self._item(q, recalls[i], analyses[i], summaries[i], *scored[i], tokens=tokens, cost=cost,
                                  **latency))
        return out

    # --- answers -------------------------------------------------------------------------------------
    def _item(self, q: Question, recall: list[int], analyses: dict[str, list[int]], summary: list[int],
              predictions: dict[str, str | None], scores: dict[str, list[float]], *, tokens: dict[str, int],
              cost: dict[str, CostMeter], latency: float = math.nan,
              stage_latency: dict[str, float] | None = None) -> ItemResult:
        prediction, rule = answers.decide(self.cfg.answer_rule, predictions)
        decode = self.tok.decode
        return ItemResult(
            id=q.id, answer=q.answer, prediction=prediction, rule=rule, correct=prediction == q.answer,
            latency_s=latency, stage_latency_s=stage_latency or {}, tokens=tokens,
            outputs={"recall": decode(recall),
                     "analyze": " ".join(f"For option {lab}, {decode(a).strip()}" for lab, a in analyses.items()),
                     "summarize": decode(summary)},
            predictions_by_rule=predictions, option_scores=scores,
            executed_cost_fraction={s: cost[s].fraction for s in STAGES},
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

    @torch.inference_mode()
    def one_step(self, q: Question) -> dict[str, str]:
        """Dense one-step answers with no reasoning: letter and cloze right after the question."""
        base = self.prompts.header(q) + self.prompts.ids("Summarize: So the answer is")
        dense, meter = StagePlan(), CostMeter()
        cache = self.ex.new_cache(1)
        first = self.ex.extend(cache, [base], dense, meter, logits="last", pad_id=self.pad_id)[:, -1]
        return self._constrained([q], cache, first, dense, meter)[0][0]
