"""Answer rules: TinyThinker's regex, and the constrained `letter` / `cloze` scorers.

A rule name is one rule (`regex`, `letter`, `cloze`) or a chain `regex+letter` / `regex+cloze`:
the regex decides when the Summarize text matches, else the constrained rule does. Each item
records which rule decided (`none` when a bare `regex` found nothing: counted wrong, as TinyThinker).
"""
from __future__ import annotations

import re

import torch

from ..records.fidelity import decide  # noqa: F401 (the reasoner's; records re-score with it)

ANSWER_RE = re.compile(r"the answer is option ([A-Z])\.")
def regex_answer(text: str, labels: tuple[str, ...]) -> str | None:
    """TinyThinker's regex on the Summarize text; None without a match or for a letter not offered."""
    match = ANSWER_RE.search(text)
    return match.group(1) if match and match.group(1) in labels else None


def letter_answer(next_logits: torch.Tensor, letter_ids: list[int], labels: tuple[str, ...]) -> str:
    """The most likely option letter at the position after `So the answer is option`."""
    return labels[int(next_logits[letter_ids].argmax())]


def cloze_answer(option_logprobs: list[float], labels: tuple[str, ...]) -> str:
    """The option whose text has the highest mean log-likelihood per token (ties: the first)."""
    return labels[max(range(len(labels)), key=lambda i: option_logprobs[i])]


def option_logprob(first_logits: torch.Tensor, block_logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Mean log p(ids) as a 0-dim tensor on the logits' device.

    `first_logits` [vocab] predicts ids[0]; `block_logits` [>= len(ids) - 1, vocab] are the logits at
    the option's own tokens, so block_logits[j] predicts ids[j + 1].
    """
    if not ids:
        raise ValueError("an option needs at least one token")
    total = torch.log_softmax(first_logits.float(), -1)[ids[0]]
    if len(ids) > 1:
        # the index must live where the logits do (CUDA), or gather fails
        index = torch.tensor(ids[1:], dtype=torch.long, device=block_logits.device)[:, None]
        tail = torch.log_softmax(block_logits[: len(ids) - 1].float(), -1)
        total = total + tail.gather(1, index).sum()
    return total / len(ids)


def mean_logprob(first_logits: torch.Tensor, block_logits: torch.Tensor, ids: list[int]) -> float:
    """`option_logprob` as a Python float."""
    return float(option_logprob(first_logits, block_logits, ids))


def option_logprobs(first_logits: torch.Tensor, block_logits: torch.Tensor, options: list[list[int]]) -> list[float]:
    """Mean log p of each option scored as one left-padded batch.

    `block_logits` [options, width, vocab]: row i holds option i's tokens right-aligned (left
    padding), as ``SkipExecutor.extend`` returns them after ``cache.repeat(len(options))``.
    """
    width = block_logits.shape[1]
    scores = [option_logprob(first_logits, block_logits[i, width - len(ids):], ids) for i, ids in enumerate(options)]
    return torch.stack(scores).tolist()  # one device-to-host copy for all options


