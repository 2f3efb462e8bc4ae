"""The multi-stage reasoner (TinyThinker: Recall -> Analyze per option -> Summarize) on the executor.

Every method runs through ``Reasoner.solve``: the method only supplies the ``SkipPlan`` (and
optional token callbacks), so speed and accuracy differ only by what is skipped. Each stage
re-prefills its whole prompt under its own stage plan; stage 2 prefills the shared
question+recall prefix once and decodes all options as one batch.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from . import answers
from .benchmarks import Question, normalize_stem
from .demos import Demo
from .executor import CostMeter, Generation, SkipExecutor, TokenCallback, synchronize
from .plan import SkipPlan, StagePlan
from .prompts import STAGES, PromptBuilder, StopTokens
from .results import ItemResult

# Per-stage generation caps, chosen by measurement (README, "Choosing the defaults").
DEFAULT_MAX_NEW_TOKENS = {"recall": 48, "analyze": 32, "summarize": 16}


@dataclass
class ReasonerConfig:
    """Everything that shapes the reasoner's prompts and decoding."""

    shots: int = 1
    chat: bool = True
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    answer_rule: str = "letter"
    share_prefix: bool = True  # stage 2: prefill question+recall once, decode options as a batch
    reuse_kv: bool = True  # continue the previous stage's cache when both stages skip the same
    one_step: bool = False  # also score a one-step (no reasoning) letter/cloze answer, untimed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _HeldCache:
    """A batch-1 cache from an earlier stage, the token ids it holds, and how they were computed."""

    ids: list[int]
    cache: object
    signature: tuple | None


def select_demos(demos: list[Demo], shots: int, exclude_stems: set[str]) -> list[Demo]:
    """The first `shots` demos whose question is not an evaluation question (no leakage)."""
    return [d for d in demos if normalize_stem(d.question.stem) not in exclude_stems][:shots]


class Reasoner:
    """Runs one question through the three stages under a skip plan."""

    def __init__(self, executor: SkipExecutor, tokenizer, demos: list[Demo], config: ReasonerConfig) -> None:
        self.ex = executor
        self.tok = tokenizer
        self.cfg = config
        answers.check_rule(config.answer_rule)
        self.prompts = PromptBuilder(tokenizer, config.chat, demos)
        self.stops = StopTokens.for_tokenizer(tokenizer)
        self.pad_id = tokenizer.pad_token_id or 0

    def _generate(self, inputs, plan: StagePlan, stage: str, on_token, prefix=None, cache=None) -> Generation:
        return self.ex.generate(inputs, plan, self.cfg.max_new_tokens[stage], self.stops.for_stage(stage),
                                prefix=prefix, cache=cache, on_token=on_token, pad_id=self.pad_id)

    def _reuse(self, held: "_HeldCache | None", plan: StagePlan, ids: list[int], need_one: bool):
        """The previous stage's cache cut back to its common prefix with `ids`, when exact.

        Exact when every token in it was computed with this stage's skips (equal uniform
        signatures: dense, or a static plan shared by the stages); otherwise re-prefill (None)."""
        sig = plan.uniform_signature()
        if not self.cfg.reuse_kv or held is None or sig is None or sig != held.signature:
            return None
        n = 0
        for a, b in zip(held.ids, ids):
            if a != b:
                break
            n += 1
        if need_one:  # at least one token must be fed to get next-token logits
            n = min(n, len(ids) - 1)
        held.cache.truncate(n)
        return held.cache

    def solve(self, q: Question, plan: SkipPlan,
              callbacks: dict[str, TokenCallback | None] | None = None) -> ItemResult:
        """Answer one question; latencies are wall time with the device synchronised."""
        callbacks = callbacks or {}
        P = self.prompts
        start = time.perf_counter()
        header = P.header(q)

        recall_plan = plan.for_stage("recall")
        prompt1 = P.recall(header)
        g1 = self._generate([prompt1], recall_plan, "recall", callbacks.get("recall"))
        recall = P.as_sentence(g1.content_tokens(0))
        held = _HeldCache(prompt1 + g1.fed_tokens(0), g1.cache, recall_plan.uniform_signature())
        t1 = time.perf_counter()

        analyze_plan = plan.for_stage("analyze")
        prefix = P.analyze_prefix(header, recall)
        suffixes = [P.analyze_suffix(label) for label in q.labels]
        if self.cfg.share_prefix:
            g2 = self._generate(suffixes, analyze_plan, "analyze", callbacks.get("analyze"), prefix=prefix,
                                cache=self._reuse(held, analyze_plan, prefix, need_one=False))
            held = _HeldCache(prefix, g2.prefix_cache, analyze_plan.uniform_signature())
        else:
            g2 = self._generate([prefix + s for s in suffixes], analyze_plan, "analyze", callbacks.get("analyze"))
            held = None
        analyses = {label: P.as_sentence(g2.content_tokens(i)) for i, label in enumerate(q.labels)}
        t2 = time.perf_counter()

        summarize_plan = plan.for_stage("summarize")
        prompt3 = P.summarize(header, recall, analyses, q.labels)
        reused = self._reuse(held, summarize_plan, prompt3, need_one=True)
        start3 = reused.length if reused is not None else 0
        g3 = self._generate([prompt3[start3:]], summarize_plan, "summarize", callbacks.get("summarize"), cache=reused)
        summary = g3.content_tokens(0)
        summary_text = self.tok.decode(summary)
        scoring = CostMeter()
        predictions = self._score(q, g3, summary_text, summarize_plan, scoring)
        prediction, rule = answers.decide(self.cfg.answer_rule, predictions)
        synchronize(self.ex.device)
        t3 = time.perf_counter()

        cost = {"recall": g1.cost, "analyze": g2.cost, "summarize": CostMeter()}
        cost["summarize"].add(g3.cost)
        cost["summarize"].add(scoring)
        return ItemResult(
            id=q.id, answer=q.answer, prediction=prediction, rule=rule, correct=prediction == q.answer,
            latency_s=t3 - start,
            stage_latency_s={"recall": t1 - start, "analyze": t2 - t1, "summarize": t3 - t2},
            tokens={"recall": len(g1.tokens[0]), "analyze": sum(len(t) for t in g2.tokens),
                    "summarize": len(g3.tokens[0])},
            outputs={"recall": self.tok.decode(recall),
                     "analyze": " ".join(f"For option {lab}, {self.tok.decode(a).strip()}" for lab, a in analyses.items()),
                     "summarize": summary_text},
            predictions_by_rule=predictions,
            executed_cost_fraction={s: cost[s].fraction for s in STAGES},
        )

    def _score(self, q: Question, g3: Generation, summary_text: str, plan: StagePlan,
               meter: CostMeter) -> dict[str, str | None]:
        """Per-rule predictions after the Summarize text, under stage 3's plan."""
        # " So the answer is" is shared by both constrained rules
        context = g3.unfed_tokens(0) + self.prompts.ids(" So the answer is")
        first = self.ex.extend(g3.cache, [context], plan, meter, logits="last", pad_id=self.pad_id)[0, -1]
        return {"regex": answers.regex_answer(summary_text, q.labels),
                **self._constrained(q, g3.cache, first, plan, meter)}

    def _constrained(self, q: Question, cache, first: torch.Tensor, plan: StagePlan,
                     meter: CostMeter) -> dict[str, str]:
        """`cloze` and `letter` predictions from a batch-1 cache that ends at ` So the answer is`
        (`first`: its next-token logits). The cache is left extended by ` option`."""
        P = self.prompts
        options = [P.ids(f" {text}") for text in q.options]
        block = self.ex.extend(cache.repeat(len(options)), options, plan, meter, pad_id=self.pad_id)
        width = block.shape[1]
        logprobs = [answers.mean_logprob(first, block[i, width - len(ids):], ids) for i, ids in enumerate(options)]
        nxt = self.ex.extend(cache, [P.ids(" option")], plan, meter, logits="last", pad_id=self.pad_id)[0, -1]
        return {"letter": answers.letter_answer(nxt, P.letter_ids(q.labels), q.labels),
                "cloze": answers.cloze_answer(logprobs, q.labels)}

    @torch.inference_mode()
    def one_step(self, q: Question) -> dict[str, str]:
        """Dense one-step answers with no reasoning: letter and cloze right after the question."""
        base = self.prompts.header(q) + self.prompts.ids("Summarize: So the answer is")
        dense, meter = StagePlan(), CostMeter()
        cache = self.ex.new_cache(1)
        first = self.ex.extend(cache, [base], dense, meter, logits="last", pad_id=self.pad_id)[0, -1]
        return self._constrained(q, cache, first, dense, meter)
