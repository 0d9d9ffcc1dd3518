"""A mixed set of requests for comparing pipelined decoding with step-by-step decoding, and a driver
that records what a client would see. Shared by the CPU test (eager launches) and the GPU test (CUDA
graphs). `EagerLaunches` gives a CPU engine the CUDA-graph runner's launch API."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from types import SimpleNamespace

import jsonschema
import pytest
import torch

from engines.portable.engine import LLMEngine
from engines.portable.grammar import Guide
from engines.portable.model_runner import ModelRunner
from engines.portable.sampling import SamplingParams
from tests.portable.conftest import prompt_of


def mixed_requests(prompts: list[list[int]], greedy_outputs: list[list[int]], new_tokens: list[int]
                   ) -> dict[str, tuple[list[int], SamplingParams]]:
    """Stops on an end id mid-way, on a stop sequence, an end id held back by min_length, a sampled
    request, plain greedy ones, a late prompt that repeats the first (prefix reuse), penalties and a bias."""
    requests = {}
    for index, (prompt, output, new) in enumerate(zip(prompts, greedy_outputs, new_tokens, strict=True)):
        params = SamplingParams(max_new_tokens=new, temperature=0.0, return_logprobs=True)
        if index == 1:
            params.end_id = output[len(output) // 2]
        elif index == 2:
            params.stop_token_sequences = [output[5:7]]
        elif index == 3:
            params.end_id, params.min_length = output[2], 9
        elif index == 4:
            params.temperature, params.seed = 0.8, 7  # sampled: chosen on the device behind the launch
        requests[f"r{index}"] = (prompt, params)
    requests["late"] = (prompts[0], SamplingParams(max_new_tokens=30, temperature=0.0, return_logprobs=True))
    # penalties and a bias: chosen on the device, over the tokens appended before each step
    requests["penalised"] = (prompts[1], SamplingParams(max_new_tokens=25, temperature=0.0, repetition_penalty=1.3,
                                                        frequency_penalty=0.5, presence_penalty=0.2,
                                                        return_logprobs=True))
    requests["biased"] = (prompts[2], SamplingParams(max_new_tokens=25, temperature=0.9, seed=11,
                                                     logit_bias={5: 3.0, 7: -100.0}, return_logprobs=True))
    return requests


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "tag": {"enum": ["a", "b"]},
                                           "word": {"type": "string", "pattern": "^[a-z]{2,6}$"}},
          "required": ["n", "tag", "word"], "additionalProperties": False}
REGEX = r"(yes|no)-[0-9]{3}"


def grammar_requests(eos: int) -> dict[str, tuple[list[int], SamplingParams]]:
    """Greedy rows under a JSON schema and a short regex (they end while the next step is in flight),
    unconstrained neighbours, an aborted grammar row, and a sampled grammar row."""
    schema, regex = Guide("json_schema", json.dumps(SCHEMA)), Guide("regex", REGEX)
    kinds = {"json0": schema, "free1": None, "regex2": regex, "json3": schema, "free4": None, "regex5": regex,
             "json6": schema, "aborted": schema}
    requests = {rid: (prompt_of(6 + 3 * index, seed=90 + index),
                      SamplingParams(max_new_tokens=48, temperature=0.0, end_id=eos, guide=guide, return_logprobs=True))
                for index, (rid, guide) in enumerate(kinds.items())}
    # sampled under a grammar, with its own seed: chosen on the device too
    requests["sampled"] = (prompt_of(9, seed=80), SamplingParams(max_new_tokens=12, temperature=1.0, seed=3,
                                                                 end_id=eos, guide=regex, return_logprobs=True))
    return requests


def run_all(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]],
            abort_after: dict[str, int]) -> dict[str, dict]:
    """Tokens, logprobs and finish reason per request; `abort_after[rid]` aborts it after that many steps."""
    results = {rid: {"tokens": [], "logprobs": [], "reason": None} for rid in requests}
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    steps = 0
    while engine.has_unfinished():
        for output in engine.step():
            entry = results[output.request_id]
            entry["tokens"] += output.new_token_ids
            entry["logprobs"] += output.new_logprobs or []
            if output.finished:
                entry["reason"] = output.finish_reason
        steps += 1
        for rid, at in abort_after.items():
            if steps == at:
                engine.abort(rid)
    return results


def assert_same_for_clients(pipelined: dict[str, dict], stepwise: dict[str, dict], aborted: str,
                            greedy_of_aborted: list[int]) -> None:
    for results in (pipelined, stepwise):  # the abort lands after a different number of tokens in each
        entry = results.pop(aborted)
        assert entry["reason"] == "abort" and entry["tokens"] == greedy_of_aborted[:len(entry["tokens"])]
    assert pipelined.keys() == stepwise.keys()
    for rid, expected in stepwise.items():
        got = pipelined[rid]
        assert got["tokens"] == expected["tokens"], rid
        assert got["reason"] == expected["reason"], rid
        assert len(got["logprobs"]) == len(expected["logprobs"]), rid
        for a, b in zip(got["logprobs"], expected["logprobs"], strict=True):
            assert abs(a - b) < 1e-4, rid
    assert pipelined["r1"]["reason"] == "stop" and pipelined["r2"]["reason"] == "stop"


def assert_grammar_rows_match(pipelined: dict[str, dict], stepwise: dict[str, dict], tokenizer) -> None:
    """Token for token the same as step by step (the abort lands later or sooner), grammar outputs valid."""
    assert pipelined.keys() == stepwise.keys()
    for rid, got in pipelined.items():
        want = stepwise[rid]
        if rid == "aborted":  # the abort lands after a different number of tokens
            assert got["reason"] == want["reason"] == "abort"
            shorter = min(len(got["tokens"]), len(want["tokens"]))
            assert got["tokens"][:shorter] == want["tokens"][:shorter]
            continue
        assert got["tokens"] == want["tokens"], rid
        assert got["reason"] == want["reason"], rid
        assert got["logprobs"] == pytest.approx(want["logprobs"], abs=1e-4), rid
        text = tokenizer.decode(got["tokens"])
        if rid.startswith("json"):
            assert got["reason"] == "stop", rid
            jsonschema.validate(json.loads(text), SCHEMA)
        elif rid.startswith(("regex", "sampled")):
            assert got["reason"] == "stop" and re.fullmatch(REGEX, text), (rid, text)


@dataclass
class EagerLaunch:
    tokens: list[int]
    logprobs: list[float]
    logits: torch.Tensor
    event: object = None  # set once finished, as on the GPU


class EagerLaunches:
    """The CUDA-graph runner's launch API over a CPU ModelRunner: a launch runs its forward at once and
    keeps its greedy choice; `finish` replaces the listed rows' choice with the sampler's (the engine's
    `choose`, as on the GPU), before any later launch reads it. `chosen` counts those rows."""

    def __init__(self, runner):
        self.runner, self.last, self.launches, self.from_device, self.chosen = runner, None, 0, 0, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    graph_decode = ModelRunner.graph_decode  # the runner's own rule, over this can_launch

    def can_launch(self, seqs) -> bool:
        return True

    def launch_decode(self, seqs, source_rows=None, finish=True) -> EagerLaunch:
        rows = []
        for index, seq in enumerate(seqs):
            if source_rows is None:
                token_ids = seq.token_ids
            else:  # the input token is the previous launch's choice, not appended to the sequence yet
                assert len(seq.token_ids) == seq.num_computed_tokens
                token_ids = [*seq.token_ids, self.last.tokens[source_rows[index]]]
                self.from_device += 1
            rows.append((SimpleNamespace(token_ids=token_ids, num_computed_tokens=seq.num_computed_tokens,
                                         block_table=seq.block_table), 1))
        logits = self.runner.run(rows, list(range(len(rows))))
        chosen = logits.argmax(dim=-1)
        logprobs = logits.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0]
        self.last = EagerLaunch(chosen.tolist(), logprobs.tolist(), logits)
        self.launches += 1
        if finish:
            self.finish(self.last)
        return self.last

    def grammar_bitmask(self, launch):
        return None  # a fresh bitmask: no pinned memory to copy from on the CPU

    def finish(self, launch: EagerLaunch, rows=None, choose=None) -> None:
        assert launch.event is None, "a launch is finished once"
        if rows:
            chosen = choose(launch.logits[torch.tensor(rows)])
            for row, (token, logprob) in zip(rows, chosen.tolist(), strict=True):
                launch.tokens[row], launch.logprobs[row] = int(token), logprob
            self.chosen += len(rows)
        launch.event = True

    def greedy(self, launch: EagerLaunch):
        assert launch.event is not None, "read before it was finished"
        return launch.tokens, launch.logprobs
