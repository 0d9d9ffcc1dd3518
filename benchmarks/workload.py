"""What the benchmark sends: synthetic prompts of chosen lengths, or prompts read from a file.

A workload is a list of `BenchRequest`s fixed before any traffic starts, generated from a seed, so every
target and every sweep point of a run sees exactly the same requests.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

# Short, common words for prompts without a tokenizer: one word is close to one token for most vocabularies.
WORDS = (
    "the of and to in is was for on are with as at be by this from or have an they which one had word but not "
    "what all were when we there can use each she how their if will up other about out many then them these so "
    "some her would make like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part"
).split()


@dataclass(frozen=True)
class BenchRequest:
    index: int
    prompt: str
    max_tokens: int
    prompt_tokens: int | None = None          # exact when a tokenizer was given, else None
    messages: list[dict] | None = field(default=None, compare=False)  # chat turns from a prompt file

    def chat_messages(self) -> list[dict]:
        return self.messages or [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class LengthSpec:
    """A length distribution: `fixed` at mean, `uniform` in mean·(1±spread), `normal` with sd mean·spread."""
    mean: int
    dist: str = "fixed"
    spread: float = 0.0

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed" or self.spread == 0:
            value = self.mean
        elif self.dist == "uniform":
            value = rng.uniform(self.mean * (1 - self.spread), self.mean * (1 + self.spread))
        elif self.dist == "normal":
            value = rng.gauss(self.mean, self.mean * self.spread)
        else:
            raise ValueError(f"unknown length distribution {self.dist!r}; use fixed, uniform or normal")
        return max(1, round(value))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}; pass the model's tokenizer directory")
    return Tokenizer.from_file(str(path))


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def synthetic(count: int, prompt_len: LengthSpec, output_len: LengthSpec, seed: int,
              tokenizer: Tokenizer | None = None) -> list[BenchRequest]:
    rng = random.Random(seed)
    pool = _word_token_pool(tokenizer) if tokenizer else None
    requests = []
    for index in range(count):
        n_prompt, n_output = prompt_len.sample(rng), output_len.sample(rng)
        if tokenizer is None:
            requests.append(BenchRequest(index, " ".join(rng.choice(WORDS) for _ in range(n_prompt)), n_output))
        else:
            prompt = exact_prompt(tokenizer, pool, n_prompt, rng)
            requests.append(BenchRequest(index, prompt, n_output, count_tokens(tokenizer, prompt)))
    return requests


def exact_prompt(tokenizer: Tokenizer, pool: list[int], n_tokens: int, rng: random.Random) -> str:
    """Text that encodes to exactly n_tokens (decoding random ids and re-encoding can merge or split)."""
    text = tokenizer.decode([rng.choice(pool) for _ in range(n_tokens)])
    for _ in range(50):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) == n_tokens:
            return text
        if len(ids) > n_tokens:
            text = tokenizer.decode(ids[:n_tokens])
        else:
            text += tokenizer.decode([rng.choice(pool) for _ in range(n_tokens - len(ids))])
    raise RuntimeError(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")


def _word_token_pool(tokenizer: Tokenizer, sample: int = 5000) -> list[int]:
    """Ids of whole words with a leading space that survive decode → encode as themselves.

    Such tokens do not merge with their neighbours, so a prompt of n of them is n tokens long. Only a
    sample of a large vocabulary is checked; without enough words, any round-trip-stable token will do.
    """
    ids = list(range(tokenizer.get_vocab_size()))
    ids = ids if len(ids) <= sample else random.Random(0).sample(ids, sample)
    stable = [i for i in ids if tokenizer.encode(tokenizer.decode([i]), add_special_tokens=False).ids == [i]]
    words = [i for i in stable if _is_word(tokenizer.decode([i]))]
    if len(words) >= 20:
        return words
    if not stable:
        raise ValueError("the tokenizer has no token that decodes and re-encodes to itself")
    return stable


def _is_word(text: str) -> bool:
    return len(text) > 2 and text[0] == " " and text[1:].isascii() and text[1:].isalpha()


def from_file(path: str | Path, count: int, output_len: LengthSpec | None, seed: int,
              tokenizer: Tokenizer | None = None) -> list[BenchRequest]:
    """Prompts from JSONL (or a JSON array): `prompt`, chat `messages`, or ShareGPT `conversations`.

    Output length: the fixed/distributed `output_len` if given, else the line's `max_tokens`, else the length
    of the ShareGPT reply (tokens with a tokenizer, words without), else 128.
    """
    entries = _read_entries(Path(path))
    if not entries:
        raise ValueError(f"{path}: no prompts found")
    rng = random.Random(seed)
    rng.shuffle(entries)
    requests = []
    for index in range(count):
        prompt, messages, reply = _parse_entry(entries[index % len(entries)], path)
        n_output = output_len.sample(rng) if output_len else _output_length(entries[index % len(entries)],
                                                                             reply, tokenizer)
        n_prompt = count_tokens(tokenizer, prompt) if tokenizer else None
        requests.append(BenchRequest(index, prompt, n_output, n_prompt, messages))
    return requests


def _read_entries(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from error
    return entries


def _parse_entry(entry: dict, path) -> tuple[str, list[dict] | None, str | None]:
    """(prompt text, chat messages or None, reference reply or None)."""
    if "conversations" in entry:
        turns = entry["conversations"]
        human = next((t for t in turns if t.get("from") in ("human", "user")), None)
        if human is None:
            raise ValueError(f"{path}: a conversation has no human turn")
        after = turns[turns.index(human) + 1:]
        reply = next((t["value"] for t in after if t.get("from") in ("gpt", "assistant")), None)
        return human["value"], None, reply
    if "messages" in entry:
        messages = entry["messages"]
        return "\n".join(str(m.get("content", "")) for m in messages), messages, None
    if "prompt" in entry:
        return entry["prompt"], None, None
    raise ValueError(f"{path}: each entry needs `prompt`, `messages` or `conversations`; got {sorted(entry)}")


def _output_length(entry: dict, reply: str | None, tokenizer: Tokenizer | None) -> int:
    if "max_tokens" in entry:
        return int(entry["max_tokens"])
    if reply:
        return max(1, count_tokens(tokenizer, reply) if tokenizer else len(reply.split()))
    return 128
