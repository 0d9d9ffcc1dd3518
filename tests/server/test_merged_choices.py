"""server.choices.merged: the deltas of every choice with their index; one choice skips the queue but not the
closing of its stream (which is what cancels the engine request)."""
from __future__ import annotations

import asyncio

import pytest

from server.choices import merged


def stream(name: str, items: int, events: list[str], fail: bool = False):
    async def deltas():
        try:
            for i in range(items):
                await asyncio.sleep(0)
                yield f"{name}{i}"
            if fail:
                raise ValueError(name)
        finally:
            events.append(f"{name} closed")

    return deltas()


@pytest.mark.parametrize("choices", [1, 3])
async def test_every_delta_arrives_with_its_choice_index(choices):
    events: list[str] = []
    got = [pair async for pair in merged([stream(f"c{i}-", 4, events) for i in range(choices)])]
    for i in range(choices):
        assert [delta for index, delta in got if index == i] == [f"c{i}-{n}" for n in range(4)]
    assert sorted(events) == sorted(f"c{i}- closed" for i in range(choices))


@pytest.mark.parametrize("choices", [1, 2])
async def test_leaving_early_closes_every_stream(choices):
    events: list[str] = []
    deltas = merged([stream(f"c{i}-", 1000, events) for i in range(choices)])
    async for _ in deltas:
        break
    await deltas.aclose()
    assert sorted(events) == sorted(f"c{i}- closed" for i in range(choices))


@pytest.mark.parametrize("choices", [1, 2])
async def test_an_error_reaches_the_consumer(choices):
    events: list[str] = []
    with pytest.raises(ValueError):
        async for _ in merged([stream(f"c{i}-", 2, events, fail=True) for i in range(choices)]):
            pass
