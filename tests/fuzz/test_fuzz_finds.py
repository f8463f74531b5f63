"""What the fuzzer found, each kept as a plain test that fails without its fix (docs: the fuzzer's record)."""
import math

import pytest
import torch
from helpers import cpu_isa, isa_supported
from specdec_kernels import ops, reference


@pytest.mark.parametrize("prepack,bytes_per_row", [(ops.w4a16_prepack, 16), (ops.w8a16_prepack, 32)])
@pytest.mark.parametrize("start", [0, 1])
def test_prepack_of_a_one_row_view(prepack, bytes_per_row, start):
    """A one-row view of a wider buffer counts as contiguous whatever its row stride and start, so contiguous()
    kept both and the view as int32 words raised RuntimeError ("self.stride(0) must be divisible by 4")."""
    qweight = torch.randint(0, 256, (1, bytes_per_row), dtype=torch.uint8)
    wide = torch.zeros(1, bytes_per_row + 1, dtype=torch.uint8)
    view = wide[:, start : start + bytes_per_row].copy_(qweight)
    scales, mins = torch.rand(1, 1), torch.randn(1, 1)
    for got, expected in zip(prepack(view, scales, mins, 32), prepack(qweight, scales, mins, 32)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("row", [[-math.inf] * 3, [math.nan] * 3, [math.nan, 1.0, math.inf]])
@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (2, 1.0), (2, 0.5)])
def test_sampling_a_row_softmax_leaves_undefined(row, top_k, top_p):
    """A row with no logit above -inf (or only NaN, or a +inf: exp gives NaN) left top-p no token to keep, and it
    read the first of none: a segmentation fault. Such tokens now get no mass; with none left the root accepts
    no child and the bonus is token 0."""
    tokens, parents = torch.tensor([[0, 1, 2]]), torch.tensor([[-1, 0, 0]])
    logits = torch.tensor(row).repeat(1, 3, 1)
    _, accept_len, bonus = ops.tree_verify_sample(tokens, parents, logits, 1.0, top_p, top_k, None,
                                                  torch.full((1, 4), 0.5))
    assert accept_len.tolist() == [1] and bonus.tolist() == [0]


def test_sampling_never_picks_a_nan_logit():
    """NaN logits made the top-k selection compare NaN (nth_element's order undefined); now they get no mass."""
    tokens, parents = torch.tensor([[0, 1, 2]]), torch.tensor([[-1, 0, 0]])
    logits = torch.tensor([math.nan, 1.0, 2.0]).repeat(1, 3, 1)
    accept_idx, accept_len, bonus = ops.tree_verify_sample(tokens, parents, logits, 1.0, 1.0, 1, None,
                                                           torch.full((1, 4), 0.5))
    assert accept_idx.tolist() == [[0, 2, -1]] and accept_len.tolist() == [2] and bonus.tolist() == [2]


@pytest.mark.parametrize("cause", ["a key of +inf", "a mask row with no bit"])
def test_a_row_that_sees_nothing_is_zero(cause):
    """A first token (empty cache) whose only score is -inf, from a key of +inf against a negative query or from
    a mask that hides even itself: the kernels give 0 (csrc/cpu/tree_attention.cpp: "a row that sees nothing
    gives 0"), the reference gave NaN (0 / 0). The reference now gives 0 as well."""
    q, k, v = -torch.ones(1, 1, 1, 16), torch.zeros(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    lens, mask = torch.zeros(1, dtype=torch.int32), None
    if cause == "a key of +inf":
        k[..., 0] = math.inf
    else:
        mask = torch.zeros(1, 1, 1, dtype=torch.int64)
    expected = reference.tree_attention(q, k, v, lens, mask)
    assert torch.equal(expected, torch.zeros_like(q))
    assert torch.equal(ops.tree_attention(q, k, v, lens, mask), expected)


def _empty_tree():
    return ops.tree_verify_greedy(torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0, dtype=torch.int64),
                                  torch.zeros(1, 0, 4))


def _no_tokens():
    return ops.tree_attention(torch.zeros(1, 0, 2, 16), torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 1, 16),
                              torch.zeros(1, dtype=torch.int32))


def _heads_not_a_multiple():
    return ops.tree_attention(torch.zeros(1, 1, 3, 16), torch.zeros(1, 4, 2, 16), torch.zeros(1, 4, 2, 16),
                              torch.zeros(1, dtype=torch.int32))


def _head_dim():
    return ops.tree_attention(torch.zeros(1, 1, 2, 24), torch.zeros(1, 4, 1, 24), torch.zeros(1, 4, 1, 24),
                              torch.zeros(1, dtype=torch.int32))


@pytest.mark.parametrize("call,names", [(_empty_tree, "tokens and parents"), (_no_tokens, "q's T"),
                                        (_heads_not_a_multiple, "q's heads"), (_head_dim, "q's head dim")])
def test_errors_name_the_argument(call, names):
    """Four errors said what was wrong ("a tree has 1 to 256 nodes", "T must be in [1, 256]", "query heads ... KV
    heads", "head dim must be ...") but not in which argument."""
    with pytest.raises(ValueError, match=names):
        call()


@pytest.mark.skipif(not isa_supported("amx"), reason="needs AMX")
@pytest.mark.parametrize("name,value", [("q", math.nan), ("k_cache", math.nan), ("q", math.inf)])
def test_amx_tiles_keep_a_non_finite_score(name, value):
    """AMX tiles (causal calls of T >= 64) gave a NaN score no mass (its exp's compare with -87 was ordered, so
    NaN lanes became 0): a NaN in q or k, or an inf in q (split into bf16 pieces inf + NaN), vanished into a
    finite output. The vector paths and the reference give NaN in the rows that see it."""
    g = torch.Generator().manual_seed(0)
    args = dict(q=torch.randn(1, 64, 1, 16, generator=g), k_cache=torch.randn(1, 64, 1, 16, generator=g),
                v_cache=torch.randn(1, 64, 1, 16, generator=g), cache_lens=torch.zeros(1, dtype=torch.int32))
    args[name][0, 3, 0, 5] = value
    expected = reference.tree_attention(**args)
    assert not expected.isfinite().all()
    with cpu_isa("amx"):
        got = ops.tree_attention(**args)
    assert torch.equal(got.isfinite(), expected.isfinite())
