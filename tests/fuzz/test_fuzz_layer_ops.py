"""Fuzz the runner's layer ops (rms_norm, add_rms_norm, silu_and_mul, rope_and_cache; CPU only): ranks 1-3, odd
and empty rows, every dtype and layout, NaN/inf activations, eps down to 0, RoPE at any table position with caches
filled up to capacity; a bad argument must be refused (for rope_and_cache: with both caches untouched)."""
import math

import torch
from corruptions import cache_overflow, not_contiguous, wrong_dtype, wrong_rank, wrong_size, wrong_value
from fuzzing import (ACTIVATION_DTYPES, assert_matches_reference, cpu_paths, fuzz, generator, laid_out,
                     run_case, snapshot, with_specials)
from hypothesis import given
from hypothesis import strategies as st
from specdec_kernels import ops, reference

WEIGHT_DTYPES = ACTIVATION_DTYPES + [torch.float64]


def outcome(*activations) -> str:
    return "valid" if all(bool(a.isfinite().all()) for a in activations) else "non-finite"


@st.composite
def activations(draw, even_rows: bool = False):
    """x [..., n] of rank 1-3 in a drawn dtype and layout, with NaN/inf sometimes."""
    n = draw(st.integers(0, 300)) * 2 if even_rows else draw(st.one_of(st.integers(1, 600), st.just(0)))
    lead = draw(st.lists(st.integers(1, 5), max_size=2))
    x = torch.randn(*lead, n, generator=generator(draw)) * 10.0 ** draw(st.integers(-2, 2))
    x = with_specials(draw, x.to(draw(st.sampled_from(ACTIVATION_DTYPES))))
    return laid_out(draw, x, last_dim_contiguous=False)


# ---------------------------------------------------------------- rms_norm, add_rms_norm
@st.composite
def norm_cases(draw, residual: bool):
    x = draw(activations())
    weight = torch.randn(x.shape[-1], generator=generator(draw)).to(draw(st.sampled_from(WEIGHT_DTYPES)))
    args = dict(x=x, weight=laid_out(draw, weight, last_dim_contiguous=False),
                eps=draw(st.sampled_from([0.0, 1e-6, 1e-5, 1.0])))
    if residual:
        r = torch.randn(x.shape, generator=generator(draw)).to(x.dtype)
        args["residual"] = laid_out(draw, with_specials(draw, r), last_dim_contiguous=False)
    return "cpu", args


def check_norm(args):
    if "residual" in args:
        for got, expected in zip(ops.add_rms_norm(**args), reference.add_rms_norm(**args)):
            assert_matches_reference(got, expected)
    else:
        assert_matches_reference(ops.rms_norm(**args), reference.rms_norm(**args))
    return outcome(args["x"], args.get("residual", args["x"]))


NORM_CORRUPTIONS = [
    wrong_dtype("x", [torch.float64, torch.int32]),
    wrong_value("x", "a scalar", lambda draw, a: torch.tensor(1.0)),
    wrong_rank("weight"),
    wrong_size("weight", 0, names=("weight", "x")),
    wrong_dtype("weight", [torch.int32, torch.uint8]),
    wrong_value("eps", "negative or NaN", lambda draw, a: draw(st.sampled_from([-1e-5, -1.0, math.nan]))),
]
RESIDUAL_CORRUPTIONS = NORM_CORRUPTIONS + [
    wrong_size("residual", -1, names=("residual", "x")),
    wrong_rank("residual", names=("residual", "x")),
    wrong_dtype("residual", WEIGHT_DTYPES + [torch.int32]),  # not x's
]


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_rms_norm(isa, data):
    run_case(data, isa, ops.rms_norm, norm_cases(residual=False), NORM_CORRUPTIONS, check_norm)


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_add_rms_norm(isa, data):
    run_case(data, isa, ops.add_rms_norm, norm_cases(residual=True), RESIDUAL_CORRUPTIONS, check_norm)


# ---------------------------------------------------------------- silu_and_mul
def check_silu(args):
    assert_matches_reference(ops.silu_and_mul(**args), reference.silu_and_mul(**args))
    return outcome(args["x"])


SILU_CORRUPTIONS = [
    wrong_value("x", "odd last dim", lambda draw, a: torch.cat([a["x"], a["x"].new_zeros(*a["x"].shape[:-1], 1)], -1)),
    wrong_dtype("x", [torch.float64, torch.int32]),
    wrong_value("x", "a scalar", lambda draw, a: torch.tensor(1.0)),
]


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_silu_and_mul(isa, data):
    cases = activations(even_rows=True).map(lambda x: ("cpu", {"x": x}))
    run_case(data, isa, ops.silu_and_mul, cases, SILU_CORRUPTIONS, check_silu)


# ---------------------------------------------------------------- rope_and_cache
@st.composite
def rope_cases(draw):
    batch, t, hq, hkv = (draw(st.integers(1, n)) for n in (3, 20, 9, 3))
    d, dtype, g = 2 * draw(st.integers(1, 64)), draw(st.sampled_from(ACTIVATION_DTYPES)), generator(draw)
    lens = [draw(st.integers(0, 40)) for _ in range(batch)]
    s_max, table_rows = max(lens) + t + draw(st.integers(0, 3)), draw(st.integers(1, 100))
    angles = torch.rand(table_rows, d // 2, generator=g) * 100

    def heads(h, shape_t=t, specials=True):
        x = torch.randn(batch, shape_t, h, d, generator=g).to(dtype)
        return laid_out(draw, with_specials(draw, x) if specials else x)

    return "cpu", dict(q=heads(hq), k=heads(hkv), v=heads(hkv),
                positions=laid_out(draw, torch.randint(0, table_rows, (batch, t), generator=g)),
                rope_cos=laid_out(draw, angles.cos()), rope_sin=laid_out(draw, angles.sin()),
                k_cache=heads(hkv, s_max, specials=False), v_cache=heads(hkv, s_max, specials=False),
                cache_lens=laid_out(draw, torch.tensor(lens, dtype=torch.int32)))


ROPE_WRITES = ("k_cache", "v_cache")


def check_rope(args):
    """RoPE(q) and both caches (every slot: only [cache_lens, cache_lens + T) may change) as the reference's."""
    expected_caches = snapshot({name: args[name] for name in ROPE_WRITES})
    expected = reference.rope_and_cache(**dict(args, **expected_caches))
    assert_matches_reference(ops.rope_and_cache(**args), expected)
    for name in ROPE_WRITES:
        assert_matches_reference(args[name], expected_caches[name])
    return outcome(args["q"], args["k"], args["v"])


def outside_table(draw, args):
    positions = args["positions"].clone()
    rows = args["rope_cos"].shape[0]
    positions.view(-1)[draw(st.integers(0, positions.numel() - 1))] = draw(st.sampled_from([-1, rows, rows + 9]))
    return positions


ROPE_CORRUPTIONS = [
    wrong_rank("q"),
    wrong_dtype("q", [torch.float64, torch.int32]),
    wrong_value("q", "odd head dim", lambda draw, a: a["q"][..., :-1]),
    not_contiguous("q"),
    *(wrong_size(name, dim) for name in ("k", "v") for dim in (0, 1, 3)),
    wrong_size("v", 2),
    wrong_dtype("k", WEIGHT_DTYPES),  # not q's
    not_contiguous("v"),
    *(wrong_size(name, dim) for name in ("k_cache", "v_cache") for dim in (0, 2, 3)),
    wrong_size("v_cache", 1, names=("v_cache", "k_cache")),
    wrong_dtype("k_cache", [torch.float64, torch.int8]),
    not_contiguous("v_cache"),
    wrong_value("positions", "outside the table", outside_table),
    wrong_dtype("positions", [torch.int32, torch.float32]),
    wrong_size("positions", 1),
    wrong_dtype("rope_cos", [torch.float64, torch.float16]),
    wrong_size("rope_cos", 1),
    wrong_size("rope_sin", 0, names=("rope_sin", "rope_cos")),
    cache_overflow(),
    wrong_dtype("cache_lens", [torch.int64, torch.float32]),
    wrong_size("cache_lens", 0),
]


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_rope_and_cache(isa, data):
    run_case(data, isa, ops.rope_and_cache, rope_cases(), ROPE_CORRUPTIONS, check_rope, ROPE_WRITES)
