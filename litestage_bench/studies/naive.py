"""The naive reference pipeline: `model.generate` per stage and per option, batch 1, no prefix reuse.

Same prompts (token ids), same stop tokens, same answer rules as the executor's reasoner; it exists
to measure what the executor buys and to check that predictions agree.
"""
from __future__ import annotations

import time

import torch

from ..evaluation import answers
from ..evaluation.benchmarks import Question
from ..evaluation.prompts import PromptBuilder, StopTokens
from ..evaluation.reasoner import ReasonerConfig


class NaiveReasoner:
    """TinyThinker's three stages with plain transformers calls."""

    def __init__(self, model, tokenizer, prompts: PromptBuilder, config: ReasonerConfig) -> None:
        self.model = model
        self.tok = tokenizer
        self.cfg = config
        self.prompts = prompts
        self.stops = StopTokens.for_tokenizer(tokenizer)
        self.device = next(model.parameters()).device

    def _generate(self, ids: list[int], stage: str) -> list[int]:
        """The stage's content ids after a greedy `model.generate` (cut as the reasoner cuts them)."""
        stop = self.stops.for_stage(stage)
        out = self.model.generate(torch.tensor([ids], device=self.device), max_new_tokens=self.cfg.max_new_tokens[stage],
                                  do_sample=False, eos_token_id=sorted(stop), pad_token_id=self.tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        # like the executor: a stop token sampled at the last allowed step still counts as a stop
        stopped = "stop" if new and new[-1] in stop else "length"
        return self.prompts.stage_content(new, stopped)

    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([ids], device=self.device)).logits[0].float()

    @torch.inference_mode()
    def solve(self, q: Question) -> tuple[dict[str, str | None], float]:
        """Per-rule predictions and the wall time of the whole question."""
        P = self.prompts
        start = time.perf_counter()
        header = P.header(q)
        recall = P.as_sentence(self._generate(P.recall(header), "recall"))
        prefix = P.analyze_prefix(header, recall)
        analyses = {label: P.as_sentence(self._generate(prefix + P.analyze_suffix(label), "analyze"))
                    for label in q.labels}
        stage3 = P.summarize(header, recall, analyses, q.labels)
        summary = self._generate(stage3, "summarize")
        predictions: dict[str, str | None] = {"regex": answers.regex_answer(self.tok.decode(summary), q.labels)}
        context = stage3 + summary + P.ids(" So the answer is")
        first = self._logits(context)[-1]
        logprobs = []
        for text in q.options:
            ids = P.ids(f" {text}")
            block = self._logits(context + ids)[len(context):]
            logprobs.append(answers.mean_logprob(first, block, ids))
        predictions["cloze"] = answers.cloze_answer(logprobs, q.labels)
        nxt = self._logits(context + P.ids(" option"))[-1]
        predictions["letter"] = answers.letter_answer(nxt, P.letter_ids(q.labels), q.labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return predictions, time.perf_counter() - start
