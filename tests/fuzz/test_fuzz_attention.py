"""Fuzz tree_attention: random topologies up to 256 nodes (tree masks, causal None, arbitrary mask bits), grouped
query heads, head dims, dtypes, cache lengths from 0 to exactly full, strided queries and caches, NaN/inf in q, k
and v, odd scales; every slot past cache_lens + T is NaN (poison: a read past the valid range shows up). A bad
argument of any kind must be refused."""
import math

import torch
from corruptions import (cache_overflow, Corruption, elsewhere, not_contiguous, wrong_dtype, wrong_rank,
                         wrong_size, wrong_value)
from draft_trees import draft_trees
from fuzzing import (ACTIVATION_DTYPES, assert_matches_reference, cpu_paths, devices, fuzz, generator,
                     laid_out, on, poison, run_case, with_specials)
from hypothesis import given
from hypothesis import strategies as st
from specdec_kernels import _C, ops, reference, tree


@st.composite
def attention_cases(draw):
    """(device, the op's arguments: q, k_cache, v_cache, cache_lens, tree_mask, scale)."""
    device = draw(devices(cuda_kernels=True))
    parents = draw(draft_trees(max_nodes=70))  # T >= 64 takes AMX tiles when causal
    batch, t = parents.shape
    maximal = t > 70  # few heads and small head dims: the reference's cost grows with T x Hq x D
    hkv, group = draw(st.integers(1, 1 if maximal else 3)), draw(st.integers(1, 2 if maximal else 4))
    head_dims = [64, 128] if device == "cuda" else [16, 32, 64] if maximal else [16, 32, 48, 64, 128, 256]
    d = draw(st.sampled_from(head_dims))
    dtype = draw(st.sampled_from(ACTIVATION_DTYPES if device == "cpu" else ACTIVATION_DTYPES[1:]))
    lens = [draw(st.integers(0, 300)) for _ in range(batch)]
    s_max = max(lens) + t + draw(st.integers(0, 3))  # 0: the longest row fills its cache exactly
    g = generator(draw)
    q = torch.randn(batch, t, hkv * group, d, generator=g)
    caches = torch.randn(2, batch, s_max, hkv, d, generator=g)
    for b, length in enumerate(lens):
        caches[:, b, length + t :] = poison(caches.dtype)
    mask_kind = draw(st.sampled_from(["tree", "causal", "any bits"]), label="mask")
    mask = {"tree": tree.pack_tree_mask(parents), "causal": None,
            "any bits": torch.randint(-2**63, 2**63 - 1, (batch, t, (t + 63) // 64), generator=g)}[mask_kind]
    k_cache, v_cache = (laid_out(draw, with_specials(draw, c.to(dtype))) for c in caches)
    return device, dict(q=laid_out(draw, with_specials(draw, q.to(dtype)), last_dim_contiguous=False),
                        k_cache=k_cache, v_cache=v_cache,
                        cache_lens=laid_out(draw, torch.tensor(lens, dtype=torch.int32)),
                        tree_mask=None if mask is None else laid_out(draw, mask),
                        scale=draw(st.sampled_from([None, None, 0.05, 1.0, 3.0, 0.0, -0.5, math.nan])))


def visible_inputs_finite(args) -> bool:
    """Whether q and every cache slot the op may read ([0, cache_lens + T)) are finite."""
    t = args["q"].shape[1]
    slots = [cache[b, : int(length) + t] for cache in (args["k_cache"], args["v_cache"])
             for b, length in enumerate(args["cache_lens"])]
    return all(bool(x.isfinite().all()) for x in [args["q"], *slots])


def on_amx_tiles(args) -> bool:
    """Whether the call runs on AMX tiles (csrc/cpu/tree_attention.cpp: path amx, causal, T >= 64)."""
    return args["q"].is_cpu and _C.cpu_isa() == "amx" and args["tree_mask"] is None and args["q"].shape[1] >= 64


def rows_seeing_an_inf_are_nan(args, expected):
    """AMX tiles split an inf in q or k into bf16 pieces inf + NaN, so every row that sees one is NaN, where the
    reference may be finite (a -inf score is a key of no mass): the reference with those rows NaN."""
    q, k = args["q"].cpu(), args["k_cache"].cpu()
    expected, t, group = expected.clone(), q.shape[1], q.shape[2] // k.shape[2]
    for b, length in enumerate(args["cache_lens"].tolist()):
        expected[b][q[b].isinf().any(-1)] = math.nan
        for slot, head in k[b, : length + t].isinf().any(-1).nonzero().tolist():  # causal: rows from slot on
            expected[b, max(slot - length, 0) :, head * group : (head + 1) * group] = math.nan
    return expected


def amx_error_bound(args) -> float:
    """AMX tiles drop ~2^-15 of each product (csrc/cpu/tree_attention_amx.cpp): a score moves by up to 2^-15
    scale sum_d |q k|, an output by twice that times the largest |v| (non-finite values counted as 0)."""
    q, k, v = (args[name].cpu().double().nan_to_num(0.0, 0.0, 0.0) for name in ("q", "k_cache", "v_cache"))
    scale = q.shape[-1] ** -0.5 if args["scale"] is None else abs(args["scale"])
    grouped = q.unflatten(2, (k.shape[2], -1))  # [B, T, Hkv, group, D]
    largest_score = torch.einsum("btkgd,bskd->btkgs", grouped.abs(), k.abs()).max().item() * scale
    return 2 * 2**-15 * largest_score * v.abs().max().item()


def check_attention(args):
    """The reference's values and non-finite places (a NaN in a new token's v reaches every row of its KV head, as
    0 x NaN does in the reference's softmax-weighted sum; a row whose every score is -inf is 0); on AMX tiles,
    within their error bound and with their rule for an inf in q or k."""
    expected, atol_floor = reference.tree_attention(**on("cpu", args)), 0.0
    if on_amx_tiles(args):
        expected, atol_floor = rows_seeing_an_inf_are_nan(args, expected), amx_error_bound(args)
    assert_matches_reference(ops.tree_attention(**args), expected, atol_floor)
    return "valid" if visible_inputs_finite(args) and not math.isnan(args["scale"] or 0) else "non-finite"


def node_count(draw, args):
    """q (and the mask) with 0 or 257 new tokens: only the count is wrong."""
    q, t = args["q"], draw(st.sampled_from([0, 257]))
    args["q"] = q.new_zeros(q.shape[0], t, *q.shape[2:])
    if args["tree_mask"] is not None:
        args["tree_mask"] = tree.causal_mask(q.shape[0], t) if t else args["tree_mask"][:, :0, :0]
    return ("q",)


def kv_heads(draw, args):
    """Caches with Hq + 1 KV heads: Hq is no multiple of them."""
    heads = args["q"].shape[2] + 1
    for name in ("k_cache", "v_cache"):
        cache = args[name]
        args[name] = cache[:, :, :1].expand(-1, -1, heads, -1).contiguous()
    return ("q", "k_cache")


def head_dim(draw, args):
    """q and caches with a head dim the CPU kernels lack (a multiple of 16, up to 256)."""
    d = draw(st.sampled_from([8, 24, 40, 272]))
    for name in ("q", "k_cache", "v_cache"):
        t = args[name]
        args[name] = t[..., :1].expand(*t.shape[:-1], d).contiguous()
    return ("q",)


CORRUPTIONS = [
    wrong_rank("q"),
    wrong_dtype("q", [torch.float64, torch.int32]),
    wrong_size("q", 0, names=("q", "k_cache")),
    wrong_size("q", 3, names=("q", "k_cache")),
    Corruption("q: T of 0 or 257", node_count),
    Corruption("k_cache: KV heads", kv_heads),
    Corruption("q: head dim", head_dim),
    wrong_rank("k_cache"),
    wrong_dtype("k_cache", [torch.float64, torch.int8]),
    wrong_dtype("v_cache", [torch.float64, torch.int8]),
    *(wrong_size("v_cache", dim, names=("v_cache", "k_cache")) for dim in range(4)),
    not_contiguous("k_cache", names=("k_cache",)),
    not_contiguous("v_cache", names=("v_cache",)),
    wrong_dtype("cache_lens", [torch.int64, torch.float32]),
    wrong_rank("cache_lens"),
    wrong_size("cache_lens", 0),
    cache_overflow(),
    wrong_value("tree_mask", "int32", lambda draw, a: tree.causal_mask(*a["q"].shape[:2]).int()),
    wrong_value("tree_mask", "shape", lambda draw, a: tree.causal_mask(a["q"].shape[0], a["q"].shape[1] + 64)),
    *elsewhere("k_cache", "cache_lens"),
]


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_tree_attention(isa, data):
    run_case(data, isa, ops.tree_attention, attention_cases(), CORRUPTIONS, check_attention)
