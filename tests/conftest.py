"""Fixtures of the tests that run the reasoner on a tiny random llama (tests/tiny_reasoner.py)."""
import pytest
from tiny_reasoner import smollm2_tokenizer, tiny_llama


@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def tiny_folder(tokenizer, tmp_path_factory):
    """A tiny random llama with SmolLM2's tokenizer, saved like any local model (seconds to run)."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
