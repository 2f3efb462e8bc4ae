"""A tiny random llama with SmolLM2's tokenizer and a few constructed questions: the reasoner's
and LiteStage's tests run the real prompt format in seconds."""
from __future__ import annotations

import torch

from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.plan import Draft, SkipPlan, SkipSet, StagePlan
from litestage_bench.evaluation.benchmarks import Question
from litestage_bench.evaluation.demos import Demo
from litestage_bench.evaluation.reasoner import Reasoner, ReasonerConfig

CAPS = {"recall": 10, "analyze": 6, "summarize": 5}

QUESTIONS = [
    Question("q1", "Which would let the most heat travel through?", ("a new pair of jeans", "a steel spoon in a cafeteria",
             "a cotton candy at a store", "a calvin klein cotton hat"), ("A", "B", "C", "D"), "B"),
    Question("q2", "Where do bees make honey?", ("hive", "nest"), ("A", "B"), "A"),
    Question("q3", "Is the sun a star?", ("yes", "no"), ("A", "B"), "A"),
]
DEMO = Demo(Question("d1", "What melts ice fastest?", ("salt", "sand"), ("A", "B"), "A"),
            recall="Salt lowers the freezing point of water.",
            analyses={"A": "salt melts ice.", "B": "sand does not melt ice."}, answer="A")

STATIC = SkipPlan.uniform(StagePlan.static(SkipSet.of(attn=[1], ffn=[2])), ("recall", "analyze", "summarize"), "static")
STAGEWISE = SkipPlan({"recall": StagePlan.static(SkipSet.of(ffn=[1])),
                      "analyze": StagePlan.static(SkipSet.of(attn=[2])),
                      "summarize": StagePlan.static(SkipSet.layers([3]))}, "stagewise")
# lossless: every stage computes dense and drafts under its own skips (k and confidence stop vary)
DRAFTED = SkipPlan({"recall": StagePlan(draft=Draft(StagePlan(decode=SkipSet.of(attn=[1], ffn=[2])), k=3)),
                    "analyze": StagePlan(draft=Draft(StagePlan(decode=SkipSet.layers([2])), k=2, min_confidence=0.3)),
                    "summarize": StagePlan(draft=Draft(StagePlan(decode=SkipSet.of(ffn=[1, 3])), k=4))}, "drafted")


def smollm2_tokenizer():
    """SmolLM2's tokenizer; from the folder $LITESTAGE_TEST_TOKENIZER where set (a machine without the
    model package, e.g. the GPU check of scripts/gpu_check.sh), else from the embedded model."""
    import os
    if os.environ.get("LITESTAGE_TEST_TOKENIZER"):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(os.environ["LITESTAGE_TEST_TOKENIZER"])
    from litestage_bench.engine.models import load_model
    return load_model("smollm2-135m", dtype="float32").tokenizer


def tiny_llama(tokenizer, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         attn_implementation="sdpa", tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def reasoner(model, tokenizer, **overrides) -> Reasoner:
    cfg = ReasonerConfig(chat=True, max_new_tokens=dict(CAPS), answer_rule="cloze", **overrides)
    return Reasoner(SkipExecutor(model), tokenizer, [DEMO], cfg)


def calibration_splits() -> dict[str, list[Question]]:
    """Disjoint splits for search-style tests: 'calib' (variants of QUESTIONS) and 'eval' (one other question)."""
    calib = [Question(f"c{i}", q.stem + f" (variant {i})", q.options, q.labels, q.answer)
             for i, q in enumerate(QUESTIONS * 2)]
    evaluation = [Question("e1", "Which gas do plants take in?", ("oxygen", "carbon dioxide"), ("A", "B"), "B")]
    return {"calib": calib, "eval": evaluation}


def split_loader(splits: dict[str, list[Question]]):
    """A `load_split` stand-in that serves `splits` (honouring `limit`)."""
    return lambda bench, split, **kw: list(splits[split][:kw.get("limit")])
