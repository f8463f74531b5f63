"""The runner's small layer ops (rms_norm, add_rms_norm, silu_and_mul, rope_and_cache) vs the float64
references: odd and vector-boundary sizes, every dtype and ISA, strided inputs, the threaded path, bitwise
batch invariance (with a negative control), opcheck, and bad inputs (each in its own function)."""
import pytest
import torch
from helpers import ISAS, TOLERANCES, cpu_isa, isa_supported
from specdec_kernels import ops, reference

SUPPORTED_ISAS = [isa for isa in ISAS if isa_supported(isa)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows, n): the model's 576 and 1536, odd sizes, both sides of a 16-float vector, one element
ROW_SAMPLES = [(1, 576), (3, 1536), (7, 19), (3, 111), (2, 16), (5, 17), (4, 989), (1, 1)]
# (B, T, Hq, Hkv, D, cache_lens): SmolLM2 decoding and verification, MHA, an odd head dim, a ragged batch
ROPE_SAMPLES = [(1, 1, 9, 3, 64, [5]), (1, 6, 9, 3, 64, [40]), (2, 3, 4, 4, 16, [0, 7]), (1, 4, 2, 1, 6, [2]),
                (3, 2, 8, 2, 128, [1, 9, 4])]
EPS = 1e-5


def rows(shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def assert_close(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    atol, rtol = TOLERANCES[got.dtype]
    torch.testing.assert_close(got.double(), expected.double(), atol=atol, rtol=rtol)


def rope_inputs(b, t, hq, hkv, d, lens, dtype=torch.float32, seed=0, spare=3):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    s_max = max(lens) + t + spare
    k_cache, v_cache = (torch.randn(b, s_max, hkv, d, generator=g).to(dtype) for _ in range(2))
    angles = torch.arange(2 * s_max, dtype=torch.float32)[:, None] * torch.rand(d // 2, generator=g)
    positions = torch.tensor(lens)[:, None] + torch.randint(0, t + 1, (b, t), generator=g)  # trees: repeats
    return q, k, v, positions, angles.cos(), angles.sin(), k_cache, v_cache, torch.tensor(lens, dtype=torch.int32)


def run_rope_both(args):
    """The op and the reference on their own copies of the caches -> ((q, k_cache, v_cache), same expected)."""
    *head, k_cache, v_cache, lens = args
    got_caches, expected_caches = (k_cache.clone(), v_cache.clone()), (k_cache.clone(), v_cache.clone())
    got = ops.rope_and_cache(*head, *got_caches, lens)
    expected = reference.rope_and_cache(*head, *expected_caches, lens)
    return (got, *got_caches), (expected, *expected_caches)


# ---------------------------------------------------------------- against the references
@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SAMPLES)
def test_rms_norm_matches_reference(isa, dtype, shape):
    x, weight = rows(shape, dtype, scale=3.0), rows(shape[-1:], seed=1)
    with cpu_isa(isa):
        assert_close(ops.rms_norm(x, weight, EPS), reference.rms_norm(x, weight, EPS))


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SAMPLES)
def test_add_rms_norm_matches_reference(isa, dtype, shape):
    x, residual, weight = rows(shape, dtype), rows(shape, dtype, seed=2), rows(shape[-1:], seed=1)
    with cpu_isa(isa):
        total, normed = ops.add_rms_norm(x, residual, weight, EPS)
        expected_total, expected = reference.add_rms_norm(x, residual, weight, EPS)
        assert torch.equal(total, expected_total)  # one rounded add, whatever the dtype
        assert_close(normed, expected)
        assert torch.equal(normed, ops.rms_norm(total, weight, EPS))  # = the unfused pair, bit for bit


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SAMPLES)
def test_silu_and_mul_matches_reference(isa, dtype, shape):
    x = rows((shape[0], 2 * shape[1]), dtype, scale=6.0)  # gates far into both tails of the sigmoid
    with cpu_isa(isa):
        assert_close(ops.silu_and_mul(x), reference.silu_and_mul(x))


def test_silu_extremes():
    """Large gates of both signs: exp never overflows (silu(-100) = -0, silu(100) = 100)."""
    gate = torch.tensor([-1e4, -100.0, -88.0, -20.0, 0.0, 20.0, 88.0, 100.0, 1e4])
    out = ops.silu_and_mul(torch.cat([gate, torch.ones_like(gate)]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.nn.functional.silu(gate))


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sample", ROPE_SAMPLES)
def test_rope_and_cache_matches_reference(isa, dtype, sample):
    args = rope_inputs(*sample, dtype=dtype)
    with cpu_isa(isa):
        got, expected = run_rope_both(args)
    for g, e in zip(got, expected):
        assert_close(g, e)
    assert torch.equal(got[2], expected[2])  # V is copied, not computed


def test_rope_and_cache_writes_only_the_new_slots():
    args = rope_inputs(2, 3, 4, 2, 16, [0, 5])
    k_cache, v_cache = args[6].clone(), args[7].clone()
    ops.rope_and_cache(*args)
    for b, start in enumerate([0, 5]):
        for cache, before in ((args[6], k_cache), (args[7], v_cache)):
            assert torch.equal(cache[b, :start], before[b, :start])
            assert torch.equal(cache[b, start + 3:], before[b, start + 3:])
            assert not torch.equal(cache[b, start: start + 3], before[b, start: start + 3])


def test_rope_position_zero_is_identity():
    q, k, v, positions, cos, sin, k_cache, v_cache, lens = rope_inputs(1, 2, 2, 1, 16, [0])
    rotated = ops.rope_and_cache(q, k, v, torch.zeros_like(positions), cos, sin, k_cache, v_cache, lens)
    assert torch.equal(rotated, q) and torch.equal(k_cache[0, :2], k[0])


# ---------------------------------------------------------------- layouts and threads
def test_strided_inputs():
    """Rows of a wider buffer, a transposed batch, q/k/v as head slices of one fused QKV output."""
    wide = rows((6, 40))
    x, weight = wide[:, 3:22], rows((19,), seed=1)
    assert not x.is_contiguous()
    assert torch.equal(ops.rms_norm(x, weight, EPS), ops.rms_norm(x.contiguous(), weight, EPS))
    total, normed = ops.add_rms_norm(x, x.t().contiguous().t(), weight, EPS)
    assert torch.equal(total, x + x) and torch.equal(normed, ops.rms_norm(x + x, weight, EPS))
    gate_up = rows((5, 80))[:, 2:40]
    assert torch.equal(ops.silu_and_mul(gate_up), ops.silu_and_mul(gate_up.contiguous()))

    q, k, v, positions, cos, sin, k_cache, v_cache, lens = rope_inputs(2, 3, 9, 3, 64, [4, 11])
    qkv = torch.cat([q, k, v], dim=2)  # [B, T, Hq + 2 Hkv, D], as the runner's fused QKV GEMM gives
    q_view, k_view, v_view = qkv.split([9, 3, 3], dim=2)
    assert not q_view.is_contiguous()
    caches = k_cache.clone(), v_cache.clone()
    expected = ops.rope_and_cache(q, k, v, positions, cos, sin, k_cache, v_cache, lens)
    assert torch.equal(ops.rope_and_cache(q_view, k_view, v_view, positions, cos, sin, *caches, lens), expected)
    assert torch.equal(caches[0], k_cache) and torch.equal(caches[1], v_cache)
    # one layer of a stacked [L, B, S, H, D] cache, as the runner passes it
    stacked = torch.zeros(2, *k_cache.shape), torch.zeros(2, *v_cache.shape)
    ops.rope_and_cache(q, k, v, positions, cos, sin, stacked[0][1], stacked[1][1], lens)
    written = slice(4, 7)
    assert torch.equal(stacked[0][1][0, written], k_cache[0, written]) and stacked[0][0].abs().sum() == 0


def test_threaded_rows_equal_rows_alone():
    """A prefill-sized call is split over threads: every row is still the row computed alone."""
    x, residual, weight = rows((300, 576)), rows((300, 576), seed=2), rows((576,), seed=1)
    total, normed = ops.add_rms_norm(x, residual, weight, EPS)
    gate_up = rows((300, 3072), scale=4.0)
    act = ops.silu_and_mul(gate_up)
    for i in (0, 57, 299):
        alone_total, alone = ops.add_rms_norm(x[i:i + 1], residual[i:i + 1], weight, EPS)
        assert torch.equal(alone[0], normed[i]) and torch.equal(alone_total[0], total[i])
        assert torch.equal(ops.silu_and_mul(gate_up[i:i + 1])[0], act[i])


# ---------------------------------------------------------------- batch invariance
@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_batch_invariance_bitwise(isa):
    """T tokens in one call give, bit for bit, what T calls of one token give (norms, activation, RoPE)."""
    t = 9
    x, weight, gate_up = rows((t, 576)), rows((576,), seed=1), rows((t, 3072), seed=3)
    q, k, v, _, cos, sin, k_cache, v_cache, _ = rope_inputs(1, t, 9, 3, 64, [20])
    positions = 20 + torch.arange(t)[None]
    with cpu_isa(isa):
        normed, act = ops.rms_norm(x, weight, EPS), ops.silu_and_mul(gate_up)
        caches = k_cache.clone(), v_cache.clone()
        rotated = ops.rope_and_cache(q, k, v, positions, cos, sin, *caches, torch.tensor([20], dtype=torch.int32))
        for j in range(t):
            assert torch.equal(ops.rms_norm(x[j:j + 1], weight, EPS)[0], normed[j])
            assert torch.equal(ops.silu_and_mul(gate_up[j:j + 1])[0], act[j])
            lens = torch.tensor([20 + j], dtype=torch.int32)
            alone = ops.rope_and_cache(q[:, j:j + 1], k[:, j:j + 1], v[:, j:j + 1], positions[:, j:j + 1], cos, sin,
                                       k_cache, v_cache, lens)
            assert torch.equal(alone[0, 0], rotated[0, j])
        assert torch.equal(k_cache, caches[0]) and torch.equal(v_cache, caches[1])


def test_batch_invariance_check_can_fail():
    """Negative control: the same comparisons see a one-ulp change of one input element."""
    x, weight = rows((3, 576)), rows((576,), seed=1)
    together = ops.rms_norm(x, weight, EPS)
    x[1, 100] = torch.nextafter(x[1, 100], torch.tensor(float("inf")))
    assert not torch.equal(ops.rms_norm(x[1:2], weight, EPS)[0], together[1])
    q, k, v, positions, cos, sin, k_cache, v_cache, lens = rope_inputs(1, 1, 2, 1, 16, [3])
    rotated = ops.rope_and_cache(q, k, v, positions, cos, sin, k_cache, v_cache, lens)
    assert not torch.equal(ops.rope_and_cache(q, k, v, positions + 1, cos, sin, k_cache, v_cache, lens), rotated)


# ---------------------------------------------------------------- opcheck
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x, residual, weight = rows((3, 19), dtype), rows((3, 19), dtype, seed=2), rows((19,), seed=1)
    torch.library.opcheck(torch.ops.specdec.rms_norm, (x, weight, EPS))
    torch.library.opcheck(torch.ops.specdec.add_rms_norm, (x, residual, weight, EPS))
    torch.library.opcheck(torch.ops.specdec.silu_and_mul, (rows((2, 3, 38), dtype),))
    for sample in ROPE_SAMPLES[:3]:
        torch.library.opcheck(torch.ops.specdec.rope_and_cache, rope_inputs(*sample, dtype=dtype))


def test_torch_compile():
    """The ops.* wrappers trace (through torch.ops) with fullgraph; eagerly they take _C.direct: same bits."""
    def layer_glue(x, residual, weight, gate_up):
        total, normed = ops.add_rms_norm(x, residual, weight, EPS)
        return ops.rms_norm(total, weight, EPS) + normed, ops.silu_and_mul(gate_up)

    args = rows((4, 64)), rows((4, 64), seed=2), rows((64,), seed=1), rows((4, 96), seed=3)
    compiled = torch.compile(layer_glue, fullgraph=True, backend="eager")
    for got, expected in zip(compiled(*args), layer_glue(*args)):
        assert torch.equal(got, expected)
    assert torch.equal(ops.silu_and_mul(args[3]), torch.ops.specdec.silu_and_mul(args[3]))


# ---------------------------------------------------------------- bad inputs
def test_norm_weight_size():
    with pytest.raises(ValueError, match="weight must have x's last dim 19"):
        ops.rms_norm(rows((2, 19)), rows((18,)), EPS)


def test_norm_dtype():
    with pytest.raises(ValueError, match="x must be float32, bfloat16 or float16, got Double"):
        ops.rms_norm(rows((2, 19)).double(), rows((19,)), EPS)


def test_norm_negative_eps():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ops.rms_norm(rows((2, 19)), rows((19,)), -1.0)


def test_residual_shape():
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        ops.add_rms_norm(rows((2, 19)), rows((3, 19)), rows((19,)), EPS)


def test_residual_dtype():
    with pytest.raises(ValueError, match="residual must be BFloat16"):
        ops.add_rms_norm(rows((2, 19), torch.bfloat16), rows((2, 19)), rows((19,)), EPS)


def test_silu_odd_width():
    with pytest.raises(ValueError, match=r"x must end in an even dim \[..., 2H\]"):
        ops.silu_and_mul(rows((2, 19)))


def test_rope_positions_outside_table():
    args = list(rope_inputs(1, 2, 2, 1, 16, [3]))
    args[3] = torch.tensor([[3, args[4].shape[0]]])
    with pytest.raises(ValueError, match=r"positions\[0, 1\] = \d+ is outside the RoPE table"):
        ops.rope_and_cache(*args)
    args[3] = torch.tensor([[-1, 3]])
    with pytest.raises(ValueError, match=r"positions\[0, 0\] = -1"):
        ops.rope_and_cache(*args)


def test_rope_positions_dtype():
    args = list(rope_inputs(1, 2, 2, 1, 16, [3]))
    args[3] = args[3].int()
    with pytest.raises(ValueError, match="positions must be Long"):
        ops.rope_and_cache(*args)


def test_rope_cache_overflow():
    args = list(rope_inputs(1, 2, 2, 1, 16, [3], spare=0))
    args[8] = torch.tensor([4], dtype=torch.int32)
    with pytest.raises(ValueError, match="cache overflow in row 0: cache_lens 4 \\+ T 2 > S_max 5"):
        ops.rope_and_cache(*args)


def test_rope_odd_head_dim():
    q = rows((1, 1, 2, 15))
    with pytest.raises(ValueError, match="head dim must be even"):
        ops.rope_and_cache(q, q, q, torch.zeros(1, 1, dtype=torch.long), rows((4, 7)), rows((4, 7)),
                           rows((1, 3, 2, 15)), rows((1, 3, 2, 15)), torch.zeros(1, dtype=torch.int32))


def test_rope_table_shape():
    args = list(rope_inputs(1, 2, 2, 1, 16, [3]))
    args[5] = args[5][:, :4]
    with pytest.raises(ValueError, match=r"rope_sin must be \[positions, D/2 = 8\]"):
        ops.rope_and_cache(*args)


def test_rope_cache_shape_and_dtype():
    args = list(rope_inputs(1, 2, 2, 1, 16, [3]))
    bad = list(args)
    bad[6] = args[6][..., :8]
    with pytest.raises(ValueError, match=r"k_cache must be \[B, S_max, Hkv, D\]"):
        ops.rope_and_cache(*bad)
    bad = list(args)
    bad[7] = args[7].half()
    with pytest.raises(ValueError, match="v_cache must be Float like q, got Half"):
        ops.rope_and_cache(*bad)


def test_rope_kv_shape():
    args = list(rope_inputs(1, 2, 2, 1, 16, [3]))
    args[2] = torch.cat([args[2], args[2]], dim=2)
    with pytest.raises(ValueError, match="v must have k's 1 heads"):
        ops.rope_and_cache(*args)


def test_rope_head_dim_not_contiguous():
    args = list(rope_inputs(1, 2, 4, 2, 16, [3]))
    args[1] = args[1].transpose(2, 3).contiguous().transpose(2, 3)
    with pytest.raises(ValueError, match="k must be contiguous in the head dim"):
        ops.rope_and_cache(*args)
