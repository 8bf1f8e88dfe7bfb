"""o200k_base counting offline: the vocabulary bpe-openai ships is OpenAI's, and its counts
are tiktoken's."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reflex import tokens

from .conftest import read_jsonl

# The SHA-256 that tiktoken pins for o200k_base.tiktoken (tiktoken_ext/openai_public.py).
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


@pytest.fixture(scope="module")
def shipped_vocabulary() -> bytes:
    gz = resources.files("bpe_openai.data").joinpath("o200k_base.tiktoken.gz").read_bytes()
    return gzip.decompress(gz)


def test_shipped_vocabulary_is_openais_file(shipped_vocabulary: bytes) -> None:
    assert hashlib.sha256(shipped_vocabulary).hexdigest() == O200K_SHA256


@pytest.fixture(scope="module")
def tiktoken_o200k(shipped_vocabulary: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """tiktoken's own o200k_base, fed the shipped file through its cache (tiktoken checks the
    hash itself), so the comparison is against tiktoken's tokenizer and pattern, not bpe-openai's."""
    tiktoken = pytest.importorskip("tiktoken")
    if hashlib.sha256(shipped_vocabulary).hexdigest() != O200K_SHA256:
        pytest.fail("shipped vocabulary differs from OpenAI's; tiktoken would try to download it")
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    (cache / hashlib.sha1(O200K_URL.encode()).hexdigest()).write_bytes(shipped_vocabulary)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        # tiktoken's plugin constructor, called here rather than through get_encoding's
        # process-wide cache, so that this cache dir is the one read
        from tiktoken_ext.openai_public import o200k_base

        yield tiktoken.Encoding(**o200k_base())


def corpus() -> list[str]:
    texts = ["", "hello world", "The capital of France is **Paris**.", "I'm sure they'll say 'we've' done it",
             "日本語 🚀 café naïve", "  leading and trailing  \n\n\n", "\x00\r\n\t\u2028", "<|endoftext|> is text here",
             "def qs(a):\n    return a if len(a) < 2 else qs([x for x in a[1:] if x < a[0]])\n", "1234567890" * 20]
    for vector in read_jsonl("tauq_vectors.jsonl")[:60]:
        texts.append(vector["tauq"])
    return texts


def test_counts_match_tiktoken_on_a_corpus(tiktoken_o200k: object) -> None:
    for text in corpus():
        assert tokens.count_tokens(text) == len(tiktoken_o200k.encode_ordinary(text)), text[:60]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_counts_match_tiktoken_on_arbitrary_text(tiktoken_o200k: object, text: str) -> None:
    assert tokens.count_tokens(text) == len(tiktoken_o200k.encode_ordinary(text))


def test_long_text_is_counted_in_pieces_within_a_token_per_cut(tiktoken_o200k: object) -> None:
    text = ("The quick brown fox jumps over the lazy dog. " * 12_000) + ("x" * 250_000)
    exact = len(tiktoken_o200k.encode_ordinary(text))
    cuts = len(text) // 100_000 + 1
    assert abs(tokens.count_tokens(text) - exact) <= cuts


def test_prompt_estimate_is_framing_plus_content() -> None:
    count = tokens.count_tokens
    request = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "image_url"},
                                         {"type": "text", "text": "2+2?"}], "name": "ann"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}]},
        ],
    }
    expected = (
        3 + count("system") + count("You are terse.")
        + 3 + count("user") + count("What is 2+2?") + count("ann") + 1
        + 3 + count("assistant") + count("add") + count('{"a": 2, "b": 2}')
        + 3
    )
    assert tokens.count_prompt_tokens(request) == expected
    with_tools = {**request, "tools": [{"type": "function", "function": {"name": "add"}}]}
    assert tokens.count_prompt_tokens(with_tools) == expected + count('[{"type":"function","function":{"name":"add"}}]')
    assert tokens.count_prompt_tokens({}) == 0
