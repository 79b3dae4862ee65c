"""The shared-prefix attention: rows attend to one batch-1 copy of the prefix's KV cache (never copied per row or per
step) and get the logits a plain forward over [prefix | own tokens] gives; the implementation is restored after."""

from __future__ import annotations

import torch

from harness import generation, shared_prefix


def test_rows_attend_to_one_uncopied_prefix_and_match_a_plain_forward(tiny):
    model = tiny.model
    assert shared_prefix.supported(model)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prefix = torch.randint(4, vocab, (40,), generator=gen).tolist()
    own = [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in (5, 2, 7)]  # padding exercised
    rows = [prefix + o for o in own]
    P = len(prefix)
    ids, mask = generation._batch_inputs(rows, P, 0, model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, P:]
        kv = generation._prefill(model, prefix)
        cache = generation._prefix_cache(model, kv, len(rows))
        assert isinstance(cache, shared_prefix.SharedPrefixCache)
        before = model.config._attn_implementation
        with generation._attending(model, cache):
            assert model.config._attn_implementation == shared_prefix.NAME
            out = model(
                input_ids=ids[:, P:], attention_mask=mask, position_ids=positions[:, P:], past_key_values=cache
            ).logits
        assert model.config._attn_implementation == before
    layer = cache.layers[0]
    assert layer.prefix_keys.data_ptr() == kv[0][0].data_ptr() and layer.prefix_keys.shape[0] == 1  # not copied
    assert layer.keys.shape[-2] == ids.shape[1] - P and cache.get_seq_length() == ids.shape[1]  # own tokens only
    real = mask[:, P:].bool()
    torch.testing.assert_close(out[real], plain[real], atol=1e-5, rtol=1e-5)


def test_without_a_cache_the_function_is_sdpa(tiny):
    """Registered once for the process: outside `attending` (no prefix) it is plain SDPA."""
    model = tiny.model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        before = model.config._attn_implementation
        model.config._attn_implementation = shared_prefix.NAME
        try:
            got = model(input_ids=ids).logits
        finally:
            model.config._attn_implementation = before
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_in_float64_the_shared_prefix_rows_equal_a_plain_forward_to_rounding(tiny):
    """In fp64 the two paths agree to ~1e-12, so any fp32 gap between them is summation order: a mask, padding or
    position error would stay as large in fp64 as in fp32 (left-padded rows of different lengths exercised)."""
    import copy

    model = copy.deepcopy(tiny.model).double()
    gen = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size
    prefix = torch.randint(4, vocab, (48,), generator=gen).tolist()
    rows = [prefix + torch.randint(4, vocab, (n,), generator=gen).tolist() for n in (6, 1, 9, 3)]
    P = len(prefix)
    ids, mask = generation._batch_inputs(rows, P, 0, model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, P:]
        cache = generation._prefix_cache(model, generation._prefill(model, prefix), len(rows))
        with generation._attending(model, cache):
            out = model(
                input_ids=ids[:, P:], attention_mask=mask, position_ids=positions[:, P:], past_key_values=cache
            ).logits
    real = mask[:, P:].bool()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[real], plain[real], atol=1e-10, rtol=1e-10)
