"""Generation early exit (LiteStage step 3): end a stage's generation when recent tokens are unsure.

A FIFO of the last ``window`` tokens' confidences is kept per sequence; once it is full, a sequence
whose mean confidence is at or below ``threshold`` stops (the executor emits EOS instead of the
current token). Confidence is the token distribution's maximum softmax probability (``max_prob``,
suite default) or its maximum raw logit (``max_logit``, what the paper's figure names). It never
fires before ``window`` tokens exist.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..core.errors import UserError

CONFIDENCES = ("max_prob", "max_logit")


def confidence(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """[rows] confidence of each row's next-token distribution."""
    if kind == "max_prob":
        return torch.softmax(logits.float(), dim=-1).amax(-1)
    if kind == "max_logit":
        return logits.float().amax(-1)
    raise UserError(f"unknown early-exit confidence '{kind}'", f"use one of: {', '.join(CONFIDENCES)}")


@dataclass(frozen=True)
class ExitRule:
    """One stage's early-exit parameters."""

    window: int
    threshold: float
    confidence: str = "max_prob"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise UserError(f"early-exit window must be at least 1 token (got {self.window})",
                            "set a positive window")
        if not math.isfinite(self.threshold):  # a NaN threshold never fires: a silently dense run
            raise UserError(f"early-exit threshold must be a finite number (got {self.threshold})",
                            "set a finite threshold, or no early-exit rule for the stage")
        if self.confidence not in CONFIDENCES:
            raise UserError(f"unknown early-exit confidence '{self.confidence}'", f"use one of: {', '.join(CONFIDENCES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict | None) -> "ExitRule | None":
        if not data:
            return None
        return ExitRule(int(data["window"]), float(data["threshold"]), str(data.get("confidence", "max_prob")))


class _WindowCallback:
    """Per-row FIFO of the last `window` confidences over one generation (reset at step 0)."""

    def __init__(self, window: int, kind: str) -> None:
        self.window = window
        self.kind = kind
        self._buf: torch.Tensor | None = None

    def _push(self, step: int, logits: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor | None:
        """Record this step's confidences; the window means of rows whose window is full (else None)."""
        if step == 0:  # a new generation: every row is alive, row_ids = 0..rows-1
            self._buf = torch.zeros(len(row_ids), self.window, device=logits.device)
        self._buf[row_ids, step % self.window] = confidence(logits, self.kind)
        if step + 1 < self.window:
            return None
        return self._buf[row_ids].mean(-1)


class ConfidenceExit(_WindowCallback):
    """A token callback (``executor.TokenCallback``) applying an ``ExitRule``."""

    def __init__(self, rule: ExitRule) -> None:
        super().__init__(rule.window, rule.confidence)
        self.rule = rule
        self.memo_key = ("exit", rule.window, rule.threshold, rule.confidence)

    def __call__(self, step: int, logits: torch.Tensor, tokens: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        means = self._push(step, logits, row_ids)
        if means is None:
            return torch.zeros(len(row_ids), dtype=torch.bool, device=logits.device)
        return means <= self.rule.threshold


class ConfidenceRecorder(_WindowCallback):
    """A token callback that never stops anything and keeps every full window's mean confidence
    (the distribution early-exit thresholds are chosen from). Memo-neutral: outputs are dense's."""

    memo_key = None

    def __init__(self, window: int, kind: str = "max_prob") -> None:
        super().__init__(window, kind)
        self.means: list[float] = []

    def __call__(self, step: int, logits: torch.Tensor, tokens: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        means = self._push(step, logits, row_ids)
        if means is not None:
            self.means.extend(means.tolist())
        return torch.zeros(len(row_ids), dtype=torch.bool, device=logits.device)


class TraceRecorder(_WindowCallback):
    """A token callback that never stops a row and keeps, per generation and input row, the tokens it
    generated and the window mean at each step where the window is full: what `exit_cut` needs to
    give the row's output under any threshold of the same window and confidence."""

    memo_key = None  # outputs are the exit-off run's

    def __init__(self, window: int, kind: str) -> None:
        super().__init__(window, kind)
        self.generations: list[dict[int, dict]] = []

    def __call__(self, step: int, logits: torch.Tensor, tokens: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        if step == 0:
            self.generations.append({})
        rows = self.generations[-1]
        means = self._push(step, logits, row_ids)
        for i, (r, t) in enumerate(zip(row_ids.tolist(), tokens.tolist())):
            row = rows.setdefault(r, {"tokens": [], "means": {}})
            row["tokens"].append(t)
            if means is not None:
                row["means"][step] = float(means[i])
        return torch.zeros(len(row_ids), dtype=torch.bool, device=logits.device)

    def rows(self, generation: int = -1) -> list[dict]:
        """One generation's rows in input order."""
        return [row for _, row in sorted(self.generations[generation].items())]


def exit_cut(row: dict, threshold: float, stop_ids: set[int] | frozenset[int]) -> tuple[list[int], str]:
    """A row's generated ids and how it ended (``Generation.stopped``) under `threshold`, from its
    exit-off trace (``TraceRecorder``): cut at the first step whose window mean is at or below it, as
    ``ConfidenceExit`` halts there and the executor drops that step's token, unless that token ends
    the row anyway."""
    tokens = row["tokens"]
    for step in sorted(row["means"]):
        if row["means"][step] <= threshold:
            if step == len(tokens) - 1 and tokens[-1] in stop_ids:
                break
            return tokens[:step], "callback"
    return tokens, "stop" if tokens and tokens[-1] in stop_ids else "length"


def fed_count(tokens: list[int], stopped: str) -> int:
    """How many of a row's generated ids were fed back (``Generation.fed_tokens``): the decode steps
    it was live in."""
    content = len(tokens) - (stopped == "stop" and bool(tokens))
    return content - (stopped == "length" and content > 0)
