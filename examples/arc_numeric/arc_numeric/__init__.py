"""Example benchmark plugin: 20 ARC-style science questions whose choices are labelled "1".."4"
(shipped in items.jsonl; the suite relabels them A-D and splits them 15 eval / 5 calibration)."""
from pathlib import Path

from litestage_bench.evaluation.jsonl_bench import JsonlBenchmark

BENCHMARK = JsonlBenchmark(
    path=Path(__file__).with_name("items.jsonl"),
    question="question.stem",  # ARC's layout: {"id", "question": {"stem", "choices": [...]}, "answerKey"}
    choices="question.choices",
    label="answerKey",
    demos="obqa",  # few-shot demos borrowed from OBQA (science questions too)
)
