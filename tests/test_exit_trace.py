"""The early-exit derivation study: a threshold's stage output from one exit-off trace."""
from __future__ import annotations

import json

import pytest

from litestage_bench.evaluation.reasoner import ReasonerConfig
from litestage_bench.studies.exit_trace import derived_tokens, measure


@pytest.mark.parametrize("threshold, expected", [
    (0.5, ([5, 6, 7], "callback")),  # the first full window at or below it: that step's token dropped
    (0.25, ([5, 6, 7, 8], "callback")),
    (0.15, ([5, 6, 7, 8, 9, 2], "stop")),  # it fires on the row's own stop token: the row ends as it did
    (0.05, ([5, 6, 7, 8, 9, 2], "stop")),  # never at or below
])
def test_a_row_is_cut_at_its_first_window_at_or_below_the_threshold(threshold, expected):
    row = {"tokens": [5, 6, 7, 8, 9, 2], "means": {3: 0.4, 4: 0.2, 5: 0.1}}
    assert derived_tokens(row, threshold, {2}) == expected


def test_a_row_that_ran_to_its_length_limit_ends_by_length():
    assert derived_tokens({"tokens": [5, 6, 7], "means": {2: 0.9}}, 0.5, {2}) == ([5, 6, 7], "length")


def test_on_the_tiny_model_every_derived_output_equals_the_real_run(tiny_folder, tmp_path):
    """Thresholds that stop every row at its first full window (1.0), none (0.0) and some rows
    (3.8e-5): each derived analyze output equals the one the threshold's own run generates, though
    rows leave the batch at other steps than in the exit-off run."""
    config = ReasonerConfig(answer_rule="cloze", max_new_tokens={"recall": 8, "analyze": 10, "summarize": 8})
    policy = {"method": "litestage", "model": str(tiny_folder), "numerics": "float32", "bench": "obqa",
              "options": {"limit": 6, "timed": 2, "seed": 0, "exit_window": 2, "exit_confidence": "max_prob"},
              "reasoner_config": config.to_dict(),
              "stages": {s: {"skip": {"attn": [1], "ffn": []}} for s in ("recall", "analyze", "summarize")},
              "exit_thresholds_swept": {"analyze": [1.0, 0.0, 3.8e-5]}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    table = measure(str(path), "analyze", 6, 3)
    by_threshold = {row[1]: row for row in table}
    assert all(row[4] == 0 for row in table), table
    assert by_threshold["1"][3] == by_threshold["1"][2] > 0 and by_threshold["0"][3] == 0
    # the random model's confidences sit near 1 / vocabulary: this one stops some rows, not all
    assert 0 < by_threshold["3.8e-05"][3] < by_threshold["3.8e-05"][2]
