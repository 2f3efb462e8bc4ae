"""Fixtures of the tests that run the reasoner on a tiny random llama (tests/tiny_reasoner.py)."""
import pytest
from tiny_reasoner import smollm2_tokenizer, tiny_llama


@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)
