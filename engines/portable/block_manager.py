"""Paged KV-cache blocks: allocation with reference counts, and prefix reuse by chained block hashes.

A full block's hash covers its tokens and every token before it (the previous block's hash), so
equal hashes mean equal prefixes. Freed blocks keep their contents and hash until they are handed out
again: blocks holding no cached prefix first, then cached ones least recently freed first, so a later
request with the same prefix can still reuse them.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from engines.portable.sequence import Sequence


def block_hash(previous: bytes | None, tokens: list[int]) -> bytes:
    """A cryptographic digest, not Python's `hash`: two requests whose prefixes collided would read
    each other's KV cache, and tuple hashes can be made to collide on purpose."""
    digest = hashlib.sha256(previous or b"")
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((block, None) for block in range(num_blocks))
        self.num_reused_tokens = 0  # prompt tokens whose KV came from the prefix cache (kept by the scheduler)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self.free)

    def _take_free_block(self) -> int:
        block, _ = self.free.popitem(last=False)
        old_hash = self.hash_of[block]
        if old_hash is not None and self.cached.get(old_hash) == block:
            del self.cached[old_hash]
        self.hash_of[block] = None
        self.ref_counts[block] = 1
        return block

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give `seq` the blocks that its next `num_new_tokens` tokens need."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > len(self.free):
            raise RuntimeError("not enough free KV blocks; check can_allocate first")
        seq.block_table.extend(self._take_free_block() for _ in range(needed))

    def reuse_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks matching the start of a new sequence; returns the tokens they cover.

        At least one token is always left to compute, since its logits are needed."""
        if not self.enable_prefix_caching or seq.block_table or seq.params.return_context_logits:
            return 0  # a request for the prompt's logits computes every position
        previous = seq.cache_salt
        max_blocks = (seq.num_tokens - 1) // self.block_size
        for index in range(max_blocks):
            tokens = seq.token_ids[index * self.block_size:(index + 1) * self.block_size]
            current = block_hash(previous, tokens)
            block = self.cached.get(current)
            if block is None:
                break
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(current)
            previous = current
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish the hashes of blocks that the last step filled completely."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        while len(seq.block_hashes) < full:
            index = len(seq.block_hashes)
            previous = seq.block_hashes[-1] if seq.block_hashes else seq.cache_salt
            tokens = seq.token_ids[index * self.block_size:(index + 1) * self.block_size]
            current = block_hash(previous, tokens)
            block = seq.block_table[index]
            seq.block_hashes.append(current)
            if current not in self.cached:
                self.cached[current] = block
                self.hash_of[block] = current

    def fork(self, parent: Sequence, child: Sequence) -> tuple[int, int] | None:
        """Give `child` the KV cache of `parent`: full blocks are shared (one more reference each), and
        a last block that is only partly filled is copied, since both will write their next tokens into
        it. Returns that copy as (source, destination) blocks for the runner, or None when there is
        nothing to copy. Raises if no block is free for the copy; check `can_fork` first."""
        child.block_table = parent.block_table[:-(-parent.num_computed_tokens // self.block_size)]
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens
        for block in child.block_table:
            self.ref_counts[block] += 1
        if parent.num_computed_tokens % self.block_size == 0 or not child.block_table:
            return None
        if not self.free:
            raise RuntimeError("no free KV block for a forked sequence's partial block; check can_fork first")
        index = (parent.num_computed_tokens - 1) // self.block_size
        source = child.block_table[index]
        self.ref_counts[source] -= 1  # the parent keeps it
        child.block_table[index] = self._take_free_block()
        return source, child.block_table[index]

    def can_fork(self, parent: Sequence, children: int) -> bool:
        partial = parent.num_computed_tokens % self.block_size != 0
        return not partial or children <= len(self.free)

    def free_sequence(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):  # the tail is the least likely to be shared: evict it first
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
                if self.hash_of[block] is None:  # nothing to reuse in it: hand it out before cached ones
                    self.free.move_to_end(block, last=False)
        seq.reset_cache_state()
