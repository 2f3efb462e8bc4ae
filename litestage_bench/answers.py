"""Answer rules: TinyThinker's regex, and the constrained `letter` / `cloze` scorers.

A rule name is one rule (`regex`, `letter`, `cloze`) or a chain `regex+letter` / `regex+cloze`:
the regex decides when the Summarize text matches, else the constrained rule does. Each item
records which rule decided (`none` when a bare `regex` found nothing: counted wrong, as TinyThinker).
"""
from __future__ import annotations

import re

import torch

from .errors import UserError

ANSWER_RE = re.compile(r"the answer is option ([A-Z])\.")
RULES = ("regex", "letter", "cloze", "regex+letter", "regex+cloze")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise UserError(f"unknown answer rule '{rule}'", f"use one of: {', '.join(RULES)}")
    return rule


def regex_answer(text: str, labels: tuple[str, ...]) -> str | None:
    match = ANSWER_RE.search(text)
    return match.group(1) if match and match.group(1) in labels else None


def letter_answer(next_logits: torch.Tensor, letter_ids: list[int], labels: tuple[str, ...]) -> str:
    """The most likely option letter at the position after `So the answer is option`."""
    return labels[int(next_logits[letter_ids].argmax())]


def cloze_answer(option_logprobs: list[float], labels: tuple[str, ...]) -> str:
    """The option whose text has the highest mean log-likelihood per token."""
    return labels[max(range(len(labels)), key=lambda i: option_logprobs[i])]


def mean_logprob(first_logits: torch.Tensor, block_logits: torch.Tensor, ids: list[int]) -> float:
    """Mean log p(ids) where first_logits predicts ids[0] and block_logits[j] predicts ids[j+1]."""
    logps = [torch.log_softmax(first_logits, -1)[ids[0]]]
    if len(ids) > 1:
        tail = torch.log_softmax(block_logits[: len(ids) - 1], -1)
        logps.append(tail.gather(1, torch.tensor(ids[1:])[:, None]).sum())
    return float(sum(logps)) / len(ids)


def decide(rule: str, predictions: dict[str, str | None]) -> tuple[str | None, str]:
    """Apply a rule (or chain) to the per-rule predictions: (prediction, deciding rule)."""
    parts = rule.split("+")
    for part in parts:
        if predictions.get(part) is not None:
            return predictions[part], part
    return None, "none"
