"""The engine's side of beam search: a request's beams run as sequences of the batch, and once every
live beam has its logits (a preempted one computes later), the search step (beam_search.py) picks the
continuations; the beams are then taken over, forked (sharing KV blocks) or ended accordingly.
"""
from __future__ import annotations

import torch

from engines.portable.beam_search import Candidate, Hypothesis
from engines.portable.outputs import StepOutput
from engines.portable.request_group import RequestGroup
from engines.portable.sampler import apply_logit_bias, apply_min_length, apply_penalties
from engines.portable.sequence import Sequence, Status


class BeamSteps:
    """Mixed into LLMEngine, whose scheduler, blocks, groups and `_fork` it uses."""

    def _beam_rows(self, logits: torch.Tensor, beams: list[Sequence]) -> list[StepOutput]:
        """Keep each beam's log-probabilities until every live beam of its request has them (a
        preempted beam computes later), then take the request's search step."""
        log_probs = apply_logit_bias(logits, beams).log_softmax(dim=-1)
        log_probs = apply_min_length(apply_penalties(log_probs, beams), beams)
        outputs, ready = [], []
        for row, seq in enumerate(beams):
            group = self.groups[seq.request_id]
            group.pending[id(seq)] = log_probs[row]
            if len(group.pending) == len(group.live) and group not in ready:
                ready.append(group)
        for group in ready:
            outputs += self._beam_step(group)
        return outputs

    def _beam_step(self, group: RequestGroup) -> list[StepOutput]:
        beams, search = group.live, group.beam
        rows = torch.stack([group.pending[id(seq)] for seq in beams])
        group.pending.clear()
        candidates = search.step(rows, [seq.cum_logprob for seq in beams], lambda p, t: self._stops(beams[p], t))
        for rank, candidate in enumerate(candidates):
            if candidate.stops is not None:
                parent = beams[candidate.parent]
                search.offer(candidate, rank, parent.num_output_tokens + 1, self._hypothesis(parent, candidate, rows))
        running = search.running(candidates)
        search.after_step(running[0].cum_logprob if running else None, beams[0].num_output_tokens + 1)
        if search.done:
            return self._finish_beams(group)
        self._continue_beams(group, running, rows)
        return []

    def _stops(self, seq: Sequence, token: int) -> str | None:
        """How `seq` would end if `token` came next: the end id or a stop sequence, or its length."""
        if token == seq.params.effective_end_id:
            return "stop"
        output = seq.output_token_ids + [token]
        for stop in seq.params.stop_token_sequences:
            if stop and output[-len(stop):] == stop:
                return "stop"
        if len(output) >= seq.params.max_new_tokens or seq.num_tokens + 1 >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _hypothesis(parent: Sequence, candidate: Candidate, rows: torch.Tensor) -> Hypothesis:
        token_logprob = float(rows[candidate.parent, candidate.token])
        ends_on_end_id = candidate.token == parent.params.effective_end_id
        tokens = parent.output_token_ids + ([] if ends_on_end_id else [candidate.token])
        logprobs = parent.logprobs + ([] if ends_on_end_id else [token_logprob])
        return Hypothesis(0.0, candidate.cum_logprob, tokens, logprobs, candidate.stops)

    def _continue_beams(self, group: RequestGroup, running: list[Candidate], rows: torch.Tensor) -> None:
        """The next beams: the first continuation of a beam takes it over, the others fork it (forks
        first, while the parents still hold their old tokens); beams with no continuation end."""
        beams, taken, forks = group.live, set(), []
        for index, candidate in enumerate(running):
            if candidate.parent in taken:
                forks.append((index, self._fork(beams[candidate.parent], index)))
            else:
                taken.add(candidate.parent)
        new_beams = [None] * len(running)
        for index, child in forks:
            new_beams[index] = child
        for index, candidate in enumerate(running):
            if new_beams[index] is None:
                new_beams[index] = beams[candidate.parent]
                new_beams[index].index = index
        for row, seq in enumerate(beams):
            if row not in taken:
                self.scheduler.remove(seq)
                seq.status = Status.FINISHED
        for seq, candidate in zip(new_beams, running, strict=True):
            seq.token_ids.append(candidate.token)
            seq.logprobs.append(float(rows[candidate.parent, candidate.token]))
            seq.cum_logprob = candidate.cum_logprob
        group.live = new_beams

    def _finish_beams(self, group: RequestGroup) -> list[StepOutput]:
        for seq in group.live:
            self.scheduler.remove(seq)
            seq.status = Status.FINISHED
        group.live = []
        self.groups.pop(group.request_id, None)
        best = group.beam.best(group.params.n)
        outputs = []
        for index, hypothesis in enumerate(best):
            outputs.append(StepOutput(
                group.request_id, hypothesis.token_ids,
                hypothesis.logprobs if group.params.return_logprobs else None,
                index == len(best) - 1, hypothesis.finish_reason, index, hypothesis.cum_logprob,
                context_logits=group.take_context() if index == 0 else None))
        return outputs
