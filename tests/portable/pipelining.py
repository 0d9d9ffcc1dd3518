"""A mixed set of requests for comparing pipelined decoding with step-by-step decoding, and a driver
that records what a client would see. Shared by the CPU test (eager launches) and the GPU test (CUDA
graphs)."""
from __future__ import annotations

from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams


def mixed_requests(prompts: list[list[int]], greedy_outputs: list[list[int]], new_tokens: list[int]
                   ) -> dict[str, tuple[list[int], SamplingParams]]:
    """Stops on an end id mid-way, on a stop sequence, an end id held back by min_length, a sampled
    request, plain greedy ones, and a late prompt that repeats the first (prefix reuse)."""
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
            params.temperature, params.seed = 0.8, 7  # sampled on the host: no pipelining while it runs
        requests[f"r{index}"] = (prompt, params)
    requests["late"] = (prompts[0], SamplingParams(max_new_tokens=30, temperature=0.0, return_logprobs=True))
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
