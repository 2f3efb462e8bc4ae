"""TinyThinker's three-stage format, built as token ids.

Stage prompts are concatenations of separately tokenised pieces and of the ids the model generated
in earlier stages (never re-tokenised text, except the text a stop token holds before its newline:
``PromptBuilder.stage_content``), so every pipeline (executor, naive ``generate``) sees exactly the
same ids. With a chat template, demos become earlier user/assistant turns and the
stage text continues the assistant turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .benchmarks import Question
from .demos import Demo

ANSWER_PREFIX = " So the answer is option"


def question_block(q: Question) -> str:
    """`{stem}\\n(A) text (B) text ...` (StrategyQA: `(A) yes (B) no`)."""
    opts = " ".join(f"({label}) {text}" for label, text in zip(q.labels, q.options))
    return f"{q.stem}\n{opts}"


def demo_solution(demo: Demo) -> str:
    """A demo's three stages in TinyThinker's strings."""
    analyses = " ".join(f"For option {label}, {_sentence(demo.analyses[label])}" for label in demo.question.labels
                        if label in demo.analyses)
    return (f"Recall: {_sentence(demo.recall)}\nAnalyze: {analyses}\n"
            f"Summarize: So the answer is option {demo.answer}.")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


class PromptBuilder:
    """Token ids for each stage of one model's prompts."""

    def __init__(self, tokenizer, chat: bool, demos: list[Demo]) -> None:
        self.tok = tokenizer
        self.chat = chat and getattr(tokenizer, "chat_template", None) is not None
        self.demos = demos

    def ids(self, text: str) -> list[int]:
        return _encode(self.tok, text)

    def header(self, q: Question) -> list[int]:
        """Demos plus the question, up to where the model's answer begins."""
        if self.chat:
            messages = []
            for demo in self.demos:
                messages += [{"role": "user", "content": question_block(demo.question)},
                             {"role": "assistant", "content": demo_solution(demo)}]
            messages.append({"role": "user", "content": question_block(q)})
            text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            shots = "".join(f"{question_block(d.question)}\n{demo_solution(d)}\n\n" for d in self.demos)
            text = f"{shots}{question_block(q)}\n"
        bos = [self.tok.bos_token_id] if (not self.chat and self.tok.bos_token_id is not None
                                          and getattr(self.tok, "add_bos_token", False)) else []
        return bos + self.ids(text)

    def recall(self, header: list[int]) -> list[int]:
        return header + self.ids("Recall:")

    def analyze_prefix(self, header: list[int], recall: list[int]) -> list[int]:
        """Shared by every option: question + recall + `\\nAnalyze: For option`."""
        return header + self.ids("Recall:") + recall + self.ids("\nAnalyze: For option")

    def analyze_suffix(self, label: str) -> list[int]:
        return self.ids(f" {label},")

    def summarize(self, header: list[int], recall: list[int], analyses: dict[str, list[int]],
                  labels: tuple[str, ...]) -> list[int]:
        ids = header + self.ids("Recall:") + recall + self.ids("\nAnalyze:")
        for label in labels:
            ids += self.ids(f" For option {label},") + analyses[label]
        return ids + self.ids("\nSummarize:")

    def stage_content(self, tokens: list[int], stopped: str) -> list[int]:
        """A stage's content ids from one finished row's generated ids.

        `stopped` is how the row ended (``Generation.stopped``): "stop", "length" or "callback".
        A stage ends at the first token holding a newline (or, for recall / analyses, a full stop)
        or at an end token, and such a token may carry text ("hot.", ".S", ".\n"). So after a
        "stop": an end token (EOS / end-of-turn / pad) or a token blank before its first newline
        is dropped; a token with text before a newline is replaced by the ids of that text;
        any other stop token (a full stop) is kept. Other rows are returned unchanged.
        """
        if stopped != "stop" or not tokens:
            return list(tokens)
        body, last = list(tokens[:-1]), tokens[-1]
        if last in end_token_ids(self.tok):
            return body
        head, newline, _ = self._last_token_text(body, last).partition("\n")
        if not head.strip():
            return body
        return body + self.ids(head) if newline else body + [last]

    def _last_token_text(self, body: list[int], last: int) -> str:
        """The text `last` adds after `body` (decoded in context: some tokenizers drop a token's
        leading space when it is decoded alone)."""
        before = self.tok.decode(body)
        after = self.tok.decode(body + [last])
        return after[len(before):] if after.startswith(before) else self.tok.decode([last])

    def as_sentence(self, generated: list[int]) -> list[int]:
        """Generated ids ending in a full stop (TinyThinker appends one when it is missing)."""
        if self.tok.decode(generated).rstrip().endswith("."):
            return generated
        return generated + self.ids(".")

    def answer_prefix(self) -> list[int]:
        return self.ids(ANSWER_PREFIX)

    def letter_ids(self, labels: tuple[str, ...]) -> list[int]:
        """The first token of ` A`, ` B`, ... (each a single token in the embedded tokenizers)."""
        return [self.ids(f" {label}")[0] for label in labels]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _encode(tok, text: str) -> list[int]:
    return list(_cached_encode(tok, text))


@lru_cache(maxsize=4096)
def _cached_encode(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text, add_special_tokens=False).input_ids)


@dataclass(frozen=True)
class StopTokens:
    """Token ids that end a stage.

    Every stage ends at EOS / end-of-turn or a newline. Recall and each option's analysis are one
    sentence in TinyThinker's demos, so they also end at the first token holding a full stop
    (suite decision: it keeps small models from rambling and CPU runs practical).
    ``end``: the EOS / end-of-turn / pad ids (never part of a stage's text; see
    ``PromptBuilder.stage_content``).
    """

    line: frozenset[int]
    sentence: frozenset[int]
    end: frozenset[int] = frozenset()

    def for_stage(self, stage: str) -> frozenset[int]:
        return self.line if stage == "summarize" else self.sentence

    @staticmethod
    def for_tokenizer(tok) -> "StopTokens":
        return _stop_tokens(tok)


@lru_cache(maxsize=8)
def end_token_ids(tok) -> frozenset[int]:
    """EOS, pad and the end-of-turn / end-of-text special tokens the tokenizer knows."""
    ends = {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}
    for token in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"):
        tid = tok.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tok.unk_token_id:
            ends.add(tid)
    return frozenset(ends)


@lru_cache(maxsize=8)
def _stop_tokens(tok) -> StopTokens:
    ends = end_token_ids(tok)
    texts = tok.batch_decode([[tid] for tid in range(len(tok))])
    line = ends | {tid for tid, text in enumerate(texts) if "\n" in text}
    sentence = line | {tid for tid, text in enumerate(texts) if "." in text}
    return StopTokens(frozenset(line), frozenset(sentence), ends)
