"""The shared few-shot header's KV cache, computed once per (model, dtype, prefill skip set).

Every stage prompt of every question of a benchmark starts with the same token ids: the chat
template and the demos, up to where the question begins. Their keys/values depend only on those
ids and on the sub-layers executed for them, so each question can start from a copy instead of
re-prefilling them (a stage-wise plan that re-prefills would otherwise pay it three times).
"""
from __future__ import annotations

from collections import OrderedDict

from ..engine.executor import CostMeter, SkipExecutor
from ..engine.kvcache import SkipKVCache
from ..engine.plan import PREFILL_STEP, StagePlan
from .benchmarks import Question
from .prompts import PromptBuilder, common_prefix_length

# Two questions that share nothing from their first character on (their common prefix is the header).
_PROBES = (Question("probe-a", "Alpha?", ("x", "y"), ("A", "B"), "A"),
           Question("probe-b", "Zulu!", ("p", "q"), ("A", "B"), "B"))


def shared_header_ids(prompts: PromptBuilder) -> list[int]:
    """The token ids every question's header starts with (template + demos)."""
    a, b = (prompts.header(q) for q in _PROBES)
    return a[:common_prefix_length(a, b)]


class HeaderCache:
    """Batch-1 caches of the shared header, one per prefill skip key (least recently used kept)."""

    def __init__(self, executor: SkipExecutor, ids: list[int], max_entries: int = 64) -> None:
        self.ex = executor
        self.ids = list(ids)
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[SkipKVCache, CostMeter]] = OrderedDict()

    def covers(self, prompt: list[int]) -> bool:
        """True when the prompt starts with the header and has at least one token after it."""
        n = len(self.ids)
        return 0 < n < len(prompt) and prompt[:n] == self.ids

    def _key(self, plan: StagePlan, max_new_tokens: int) -> tuple:
        # what the header's KV depends on: the prefill set, the attention layers it must still fill
        # (re-activated later in the generation), and the replacements of skipped sub-layers
        fill = self.ex.fill_layers(plan, max_new_tokens)
        return (plan.skip_at(PREFILL_STEP), fill, tuple(sorted(plan.attn_scale.items())),
                tuple(sorted(plan.ffn_scale.items())))

    def copies(self, plan: StagePlan, max_new_tokens: int, rows: int) -> tuple[SkipKVCache, CostMeter]:
        """`rows` copies of the header's cache under this plan, and the cost of computing one header
        (charged to every question, so executed-cost fractions do not depend on the cache)."""
        key = self._key(plan, max_new_tokens)
        entry = self._entries.get(key)
        if entry is None:
            meter = CostMeter()
            cache = self.ex.new_cache(1, len(self.ids))
            self.ex.prefill(cache, [self.ids], plan, max_new_tokens, meter)
            entry = (cache, meter)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        cache, meter = entry
        return cache.repeat(rows), meter
