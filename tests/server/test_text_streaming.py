"""Incremental detokenization and stop strings on the demo tokenizer (Chinese and emoji included)."""
import random

import pytest

from server import detokenizer as detokenizer_module
from server.detokenizer import IncrementalDetokenizer, _WindowDecoder
from server.stops import StopMatcher
from server.tokenizer import Tokenizer

TEXTS = ["你好，世界！欢迎使用我们的推理服务。", "Emoji work too: 😀 🚀 🎉 ❤️ 👍 done", "café naïve über señor 3.14159"]


@pytest.fixture(scope="module")
def tokenizer(demo_checkpoints):
    return Tokenizer(demo_checkpoints["llama"])


@pytest.mark.parametrize("decode_stream", [True, False])  # False: a tokenizers older than 0.21 (no DecodeStream)
@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_never_emits_broken_utf8(tokenizer, text, decode_stream, monkeypatch):
    if not decode_stream:
        monkeypatch.setattr(detokenizer_module, "DecodeStream", None)
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer.raw)
    pieces = [detokenizer.add([token]) for token in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces[:-1]), "multi-byte characters span several tokens here"


def test_truncated_character_is_flushed_as_replacement(tokenizer):
    ids = tokenizer.encode("😀")[1:]  # without BOS: several byte tokens
    detokenizer = IncrementalDetokenizer(tokenizer.raw)
    assert detokenizer.add(ids[:-1]) == ""
    assert "\ufffd" in detokenizer.flush()


@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize("fallback", [False, True])
def test_pieces_join_to_one_decode_of_all_ids(tokenizer, skip_special_tokens, fallback):
    """Random ids (special ones included) in random batches, through DecodeStream or the Python window."""
    rng = random.Random(7)
    for _ in range(40):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 60))]
        detokenizer = IncrementalDetokenizer(tokenizer.raw, skip_special_tokens)
        if fallback:
            detokenizer._fallback = _WindowDecoder(tokenizer.raw, skip_special_tokens, [], [])
        pieces, position = [], 0
        while position < len(ids):
            size = rng.choice([1, 1, 1, 2, 3, 7])
            pieces.append(detokenizer.add(ids[position:position + size]))
            position += size
        pieces.append(detokenizer.flush())
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_stop_string_split_across_feeds_is_never_emitted():
    matcher = StopMatcher(["STOP", "结束"])
    emitted = [matcher.feed(part) for part in ["abc S", "T", "O", "P tail"]]
    assert "".join(emitted) == "abc "
    assert matcher.stopped and matcher.feed("more") == ""


def test_partial_match_that_fails_is_released():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("xST") == "x"
    assert matcher.feed("ART") == "START"
    assert matcher.flush() == "" and not matcher.stopped


def test_chinese_stop_string_and_flush():
    matcher = StopMatcher(["结束"])
    assert matcher.feed("你好结") == "你好"
    assert matcher.flush() == "结"
    matcher = StopMatcher(["结束"])
    assert matcher.feed("你好结") + matcher.feed("束了") == "你好" and matcher.stopped
