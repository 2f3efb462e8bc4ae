"""Answer rules, option scoring, and how a finished stage's generated ids become its content."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tiny_models import PROMPT, tiny_model
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from litestage_bench.core.errors import UserError
from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.plan import StagePlan
from litestage_bench.evaluation import answers
from litestage_bench.evaluation.prompts import PromptBuilder, StopTokens
from litestage_bench.records.fidelity import RULES, check_rule
from litestage_bench.studies.naive import NaiveReasoner

LABELS = ("A", "B", "C", "D")


# --- regex / letter / cloze ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Both are wrong. So the answer is option B.", "B"),
    ("the answer is option A. Later: the answer is option C.", "A"),  # the first match decides
    ("So the answer is option E.", None),  # a letter that is not an option
    ("So the answer is option B", None),  # TinyThinker's regex needs the full stop
    ("So the answer is B.", None),
    ("", None),
])
def test_regex_answer(text, expected):
    assert answers.regex_answer(text, LABELS) == expected


def test_regex_answer_respects_the_item_labels():
    assert answers.regex_answer("So the answer is option B.", ("A", "B")) == "B"
    assert answers.regex_answer("So the answer is option C.", ("A", "B")) is None


def test_letter_answer_picks_the_best_letter_only():
    logits = torch.zeros(20)
    logits[3] = 50.0  # not a letter id: must be ignored
    letter_ids = [10, 11, 12, 13]
    logits[12] = 2.0
    logits[11] = 1.5
    assert answers.letter_answer(logits, letter_ids, LABELS) == "C"


@pytest.mark.parametrize("scores, expected", [
    ([-3.0, -1.0, -2.0, -5.0], "B"),
    ([-1.0, -1.0, -2.0, -5.0], "A"),  # tie: the first option
    ([-4.0, -2.0, -2.0, -2.0], "B"),
    ([float("-inf"), -9.0, float("-inf"), -9.5], "B"),
])
def test_cloze_answer(scores, expected):
    assert answers.cloze_answer(scores, LABELS) == expected


# --- rules and chains -------------------------------------------------------------------------

PREDICTIONS = {"regex": "A", "letter": "B", "cloze": "C"}
NO_REGEX = {"regex": None, "letter": "B", "cloze": "C"}


@pytest.mark.parametrize("rule, predictions, expected", [
    ("regex", PREDICTIONS, ("A", "regex")),
    ("regex", NO_REGEX, (None, "none")),  # counted wrong, as TinyThinker does
    ("letter", PREDICTIONS, ("B", "letter")),
    ("letter", NO_REGEX, ("B", "letter")),
    ("cloze", PREDICTIONS, ("C", "cloze")),
    ("regex+letter", PREDICTIONS, ("A", "regex")),
    ("regex+letter", NO_REGEX, ("B", "letter")),
    ("regex+cloze", PREDICTIONS, ("A", "regex")),
    ("regex+cloze", NO_REGEX, ("C", "cloze")),
])
def test_decide(rule, predictions, expected):
    assert answers.decide(rule, predictions) == expected


def test_every_rule_is_decided_by_one_of_its_parts():
    for rule in RULES:
        assert answers.decide(check_rule(rule), PREDICTIONS)[1] in rule.split("+")


@pytest.mark.parametrize("rule", ["", "REGEX", "letter+regex", "regex+letter+cloze", "cloze+", "mc"])
def test_check_rule_rejects_unknown_rules(rule):
    with pytest.raises(UserError, match="unknown answer rule") as err:
        check_rule(rule)
    assert "regex+cloze" in err.value.fix


# --- option log-probabilities -----------------------------------------------------------------

def _log_softmax(row: list[float], index: int) -> float:
    """log softmax by hand, in double precision."""
    top = max(row)
    return row[index] - top - math.log(sum(math.exp(x - top) for x in row))


def test_option_logprob_equals_a_hand_computation():
    torch.manual_seed(0)
    first, block = torch.randn(11), torch.randn(4, 11)
    one = answers.option_logprob(first, block, [7])
    assert one.dim() == 0
    assert float(one) == pytest.approx(_log_softmax(first.tolist(), 7), abs=1e-6)
    ids = [2, 9, 4]  # first predicts 2, block[0] predicts 9, block[1] predicts 4; block[2:] unused
    want = (_log_softmax(first.tolist(), 2) + _log_softmax(block[0].tolist(), 9)
            + _log_softmax(block[1].tolist(), 4)) / 3
    assert answers.mean_logprob(first, block, ids) == pytest.approx(want, abs=1e-6)
    assert answers.mean_logprob(first, block[:2], ids) == pytest.approx(want, abs=1e-6)


class _OneDevice(TorchFunctionMode):
    """Fails any torch call that mixes tensors of different devices (0-dim CPU scalars allowed,
    as PyTorch allows them). The meta device checks nothing by itself, this mode does."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_option_logprob_stays_on_the_logits_device():
    first, block = torch.randn(11, device="meta"), torch.randn(4, 11, device="meta")
    with _OneDevice():
        for ids in ([7], [2, 9, 4]):
            assert answers.option_logprob(first, block, ids).device.type == "meta"


@pytest.mark.gpu
def test_option_logprob_on_cuda_equals_cpu():
    torch.manual_seed(0)
    first, block = torch.randn(50), torch.randn(6, 50)
    for ids in ([3], [3, 17, 40, 8]):
        got = answers.option_logprob(first.cuda(), block.cuda(), ids)
        assert got.device.type == "cuda"
        assert float(got) == pytest.approx(answers.mean_logprob(first, block, ids), abs=1e-5)
        # and the batched scorer used after `extend`
        padded = torch.zeros(2, 5, 50)
        padded[0, 5 - len(ids):] = block[:len(ids)]
        padded[1, 4:] = block[:1]
        got_all = answers.option_logprobs(first.cuda(), padded.cuda(), [ids, [5]])
        assert got_all == pytest.approx([answers.mean_logprob(first, block, ids),
                                         answers.mean_logprob(first, block, [5])], abs=1e-5)


def test_option_logprobs_reads_left_padded_rows():
    torch.manual_seed(1)
    first = torch.randn(11)
    options = [[1, 2, 3], [4], [5, 6]]
    rows = [torch.randn(len(o), 11) for o in options]
    padded = torch.full((3, 3, 11), float("nan"))  # padding logits must never be read
    for i, r in enumerate(rows):
        padded[i, 3 - len(r):] = r
    got = answers.option_logprobs(first, padded, options)
    want = [answers.mean_logprob(first, r, o) for r, o in zip(rows, options)]
    assert got == pytest.approx(want, abs=1e-6)


# --- stage content ------------------------------------------------------------------------------

class FakeTokenizer:
    """A minimal tokenizer: fixed token texts, greedy longest-match encoding, decode by joining."""

    def __init__(self, texts: list[str], eos: int, pad: int, unk: int, bos: int | None = None) -> None:
        self.texts = texts
        self.eos_token_id, self.pad_token_id, self.unk_token_id, self.bos_token_id = eos, pad, unk, bos
        self.special = {eos, pad, unk} | ({bos} if bos is not None else set()) | {
            i for i, t in enumerate(texts) if t.startswith("<") and t.endswith(">")}
        self._by_text = {t: i for i, t in enumerate(texts) if i not in self.special}

    def __len__(self) -> int:
        return len(self.texts)

    def __call__(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        ids, at = [], 0
        while at < len(text):
            for end in range(len(text), at, -1):
                if text[at:end] in self._by_text:
                    ids.append(self._by_text[text[at:end]])
                    at = end
                    break
            else:
                raise ValueError(f"cannot encode {text[at:]!r}")
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.texts[i] for i in ids)

    def batch_decode(self, rows: list[list[int]]) -> list[str]:
        return [self.decode(r) for r in rows]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.texts.index(token) if token in self.texts else self.unk_token_id


VOCAB = ["<pad>", "<eos>", "<unk>", "<bos>", "<|im_end|>",
         "The", " sun", " is", " hot", ".", " U", ".S", ".\n", "\n", " \n", "\n\n", " hot.\n", " A", "\nB"]


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    return PromptBuilder(FakeTokenizer(VOCAB, eos=1, pad=0, unk=2, bos=3), chat=False, demos=[])


def ids(*texts: str) -> list[int]:
    """One id per text: each text is one token of VOCAB."""
    return [VOCAB.index(t) for t in texts]


def test_stop_token_sets_of_the_fake_tokenizer(builder):
    stops = StopTokens.for_tokenizer(builder.tok)
    assert stops.end == {0, 1, 4}
    assert ids(".\n", "\n", " \n", "\n\n", " hot.\n", "\nB") == sorted(stops.line - stops.end)
    assert stops.sentence - stops.line == set(ids(".", ".S"))


@pytest.mark.parametrize("generated, stopped, expected", [
    # a full stop ends recall / analyses and stays part of the sentence
    (["The", " sun", " is", " hot", "."], "stop", ["The", " sun", " is", " hot", "."]),
    (["The", " is", " U", ".S"], "stop", ["The", " is", " U", ".S"]),
    # text before a newline stays, the newline goes
    (["The", " sun", " is", " hot", ".\n"], "stop", ["The", " sun", " is", " hot", "."]),
    (["The", " sun", " is", " hot.\n"], "stop", ["The", " sun", " is", " hot", "."]),
    (["The", " A", "\nB"], "stop", ["The", " A"]),  # nothing before the newline
    # blank before the newline, or an end token: dropped
    (["The", " sun", " is", " hot", "\n"], "stop", ["The", " sun", " is", " hot"]),
    (["The", " sun", " \n"], "stop", ["The", " sun"]),
    (["The", " sun", "\n\n"], "stop", ["The", " sun"]),
    (["The", " sun", "<eos>"], "stop", ["The", " sun"]),
    (["The", " sun", "<pad>"], "stop", ["The", " sun"]),
    (["The", " sun", "<|im_end|>"], "stop", ["The", " sun"]),
    (["\n"], "stop", []),
    ([], "stop", []),
    # capped or ended by a method's callback: the ids as generated
    (["The", " sun", " hot.\n"], "length", ["The", " sun", " hot.\n"]),
    (["The", " sun", "."], "length", ["The", " sun", "."]),
    (["The", " sun", "<eos>"], "callback", ["The", " sun", "<eos>"]),
])
def test_stage_content(builder, generated, stopped, expected):
    tokens = ids(*generated)
    got = builder.stage_content(tokens, stopped)
    assert got == ids(*expected)
    assert tokens == ids(*generated)  # the input is not modified


def test_stage_content_then_as_sentence(builder):
    def sentence(*generated: str) -> str:
        return builder.tok.decode(builder.as_sentence(builder.stage_content(ids(*generated), "stop")))

    assert sentence("The", " sun", " is", " hot", ".") == "The sun is hot."
    assert sentence("The", " is", " U", ".S") == "The is U.S."
    assert sentence("The", " sun", " is", " hot.\n") == "The sun is hot."
    assert sentence("The", " sun", " is", " hot", "\n") == "The sun is hot."
    assert sentence("The", " sun", "<eos>") == "The sun."


def _naive_vocab(free: list[int], size: int) -> tuple[FakeTokenizer, int]:
    """A vocabulary for a tiny model's ids where the first new token of its greedy continuation
    (from the second on) reads ".\\n"; ids it does not generate early serve as specials and "."."""
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    spare = [i for i in range(size) if i not in free[:k + 1]]
    eos, pad, unk, dot = spare[:4]
    texts = [f" w{i}" for i in range(size)]
    texts[eos], texts[pad], texts[unk], texts[dot], texts[free[k]] = "<eos>", "<pad>", "<unk>", ".", ".\n"
    return FakeTokenizer(texts, eos=eos, pad=pad, unk=unk), k


def test_naive_and_executor_cut_a_stage_alike():
    """The naive pipeline keeps the text of a stop token, exactly as the executor's content does."""
    model = tiny_model("llama")
    ex = SkipExecutor(model)
    free = ex.generate([PROMPT], StagePlan(), 8).tokens[0]
    tok, k = _naive_vocab(free, model.config.vocab_size)
    prompts = PromptBuilder(tok, chat=False, demos=[])
    stops = StopTokens.for_tokenizer(tok)
    gen = ex.generate([PROMPT], StagePlan(), 8, stop_ids=stops.for_stage("recall"))
    assert gen.stopped == ["stop"] and gen.tokens[0] == free[:k + 1]
    content = prompts.stage_content(gen.tokens[0], gen.stopped[0])
    assert content == free[:k] + prompts.ids(".")
    naive = NaiveReasoner(model, tok, prompts, SimpleNamespace(max_new_tokens={"recall": 8}))
    assert naive._generate(PROMPT, "recall") == content


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_stage_content_on_a_real_tokenizer(alias):
    """Qwen has ".\\n" and ".S" tokens, SmolLM2 splits them: both cut a stage to the same text."""
    from transformers import AutoTokenizer

    from litestage_bench.engine.models import MODELS, _converted_dir
    folder = _converted_dir(MODELS[alias])
    if not (folder / "tokenizer.json").exists():
        pytest.skip(f"{alias} is not converted yet (run `litestage-bench load --model {alias}`)")
    P = PromptBuilder(AutoTokenizer.from_pretrained(str(folder)), chat=False, demos=[])
    sentence = P.ids(" The sun is hot.")
    assert P.stage_content(P.ids(" The sun is hot.\n"), "stop") == sentence
    assert P.stage_content(sentence, "stop") == sentence
    assert P.stage_content(sentence + [P.tok.eos_token_id], "stop") == sentence
    us = P.ids(" It is in the U.S")
    assert P.tok.decode(P.as_sentence(P.stage_content(us, "stop"))) == " It is in the U.S."
