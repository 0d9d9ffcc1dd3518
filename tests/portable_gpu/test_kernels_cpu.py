"""What runs without a GPU: the kernel package imports lazily, and the plain-torch references agree
with the engine's own attention."""
from __future__ import annotations

import torch

import engines.portable.kernels as kernels
from engines.portable.attention import AttentionMetadata, paged_attention
from engines.portable.kernels import reference
from tests.portable_gpu.helpers import BLOCK_SIZE, paged_cache, relative_error


def test_package_imports_without_gpu_and_says_why():
    reason = kernels.unavailable_reason()
    assert kernels.available() == (reason is None)
    if reason is not None:
        assert "triton" in reason or "CUDA" in reason


def _engine_attention(q, k_cache, v_cache, tables, lens, q_lens, scale, window):
    batch = len(q_lens)
    token_seq = torch.repeat_interleave(torch.arange(batch), torch.tensor(q_lens))
    token_pos = torch.cat([torch.arange(n) for n in q_lens])
    meta = AttentionMetadata(
        slot_mapping=torch.empty(0, dtype=torch.long), block_tables=tables.long(), context_lens=lens.long(),
        query_lens=torch.tensor(q_lens), token_seq=token_seq, token_pos_in_query=token_pos,
        max_query_len=max(q_lens), max_context_len=int(lens.max()), block_size=BLOCK_SIZE, sliding_window=window)
    return paged_attention(q, k_cache, v_cache, meta, scale)


def test_references_match_the_engine_attention():
    gen = torch.Generator().manual_seed(0)
    lengths, q_lens = [1, 19, 40, 77], [1, 19, 3, 1]
    for heads, kv_heads in ((4, 4), (8, 2)):
        for window in (None, 9):
            k_cache, v_cache, tables, lens = paged_cache(lengths, kv_heads, 32, torch.float32, "cpu", gen)
            q = torch.randn(sum(q_lens), heads, 32, generator=gen)
            cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
            expected = _engine_attention(q, k_cache, v_cache, tables, lens, q_lens, 0.17, window)
            got = reference.prefill_attention_ref(q, k_cache, v_cache, tables, cu, lens, 0.17, window)
            assert relative_error(got, expected) < 1e-5
            last = (cu[1:] - 1).long()
            decode = reference.decode_attention_ref(q[last], k_cache, v_cache, tables, lens, 0.17, window)
            assert relative_error(decode, expected[last]) < 1e-5
            batched = reference.decode_attention_batched_ref(q[last], k_cache, v_cache, tables, lens,
                                                             int(lens.max()), 0.17, window)
            assert relative_error(batched, expected[last]) < 1e-5


def test_no_lazy_kernel_is_shadowed_by_its_module():
    """Importing `kernels.<module>` sets that name on the package, so a function named like its own
    module would be replaced by the module after first use."""
    assert kernels.__all__
    for name, module in kernels._LAZY.items():
        assert name != module, name
