"""GPTQ (v1 and v2, symmetric and asymmetric) and AWQ (GEMM) checkpoint directories, written here by a reference
packer of the published layouts, load exactly: every packed linear multiplies by s (q - z) bit for bit (no
dequantized copy kept), and the logits match a float64 transformers model on those weights."""
import json

import pytest
import torch
from helpers import pack_nibbles
from specdec_kernels import quant
from specdec_kernels.models import load_hf, load_model
from specdec_kernels.models.llama import pair_rows

MISSING = "{} (the 'models' extra) is not installed"
safetensors_torch = pytest.importorskip("safetensors.torch", reason=MISSING.format("safetensors"))
transformers = pytest.importorskip("transformers", reason=MISSING.format("transformers"))

TOKENS = torch.tensor([[3, 17, 42, 5, 90, 23, 64, 11, 7, 80, 31, 2]])
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ GEMM: column 8c + AWQ_ORDER[i] of a word in its bits 4i
GPTQ_V1_OFFSET = 0x11111111  # GPTQ v1 stores each zero point minus one, subtracted from the whole word
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def tiny_model(model_type: str):
    torch.manual_seed(0)
    shape = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
                 tie_word_embeddings=False)
    if model_type == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).eval()
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape)).eval()
    with torch.no_grad():  # transformers starts biases at zero: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


# ---------------------------------------------------------------- the reference packer (published layouts)
def random_codes(k: int, n: int, groups: int, sym: bool, scale_dtype, generator):
    """Codes q [K, N], zero points z [groups, N] (8 if symmetric) and scales [groups, N] of one linear."""
    q = torch.randint(0, 16, (k, n), generator=generator)
    zeros = torch.full((groups, n), 8) if sym else torch.randint(0, 16, (groups, n), generator=generator)
    scales = (torch.rand(groups, n, generator=generator) * 0.03 + 0.002).to(scale_dtype)
    return q, zeros, scales


def exact_weight(q, zeros, scales) -> torch.Tensor:
    """W [N, K] = s (q - z) in float64: exact (a 16-bit s times an integer of at most 5 bits)."""
    group = q.shape[0] // scales.shape[0]
    return (scales.double().repeat_interleave(group, 0) * (q - zeros.repeat_interleave(group, 0))).T


def packed_tensors(method: str, q, zeros, scales, group_size: int, v1: bool) -> dict:
    """One linear's checkpoint tensors: GPTQ qweight packed along K and g_idx, AWQ packed along N (interleaved)."""
    if method == "awq":
        return {"qweight": pack_nibbles(q, 1, AWQ_ORDER), "qzeros": pack_nibbles(zeros, 1, AWQ_ORDER),
                "scales": scales}
    qzeros = pack_nibbles(zeros, 1)
    if v1:
        qzeros = ((qzeros.long() - GPTQ_V1_OFFSET) % 2**32).to(torch.uint32).view(torch.int32)
    k = q.shape[0]
    g_idx = torch.arange(k, dtype=torch.int32) // (k if group_size == -1 else group_size)
    return {"qweight": pack_nibbles(q, 0), "qzeros": qzeros, "scales": scales, "g_idx": g_idx}


def quantization_config(method: str, group_size: int, v1: bool, sym: bool) -> dict:
    if method == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}
    return {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": False, "sym": sym,
            "checkpoint_format": "gptq" if v1 else "gptq_v2"}


def write_checkpoint(path, model, method: str, group_size: int, v1: bool = False, sym: bool = False,
                     scale_dtype=torch.float16, packed_head: bool = False, seed: int = 0):
    """The model as a GPTQ/AWQ directory (float tensors float16, as the formats ship them); -> the exact weights
    each packed linear stands for, float64 [N, K] by name, and the state dict of a float64 reference model."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: t.detach().half() for name, t in model.state_dict().items()}
    names = [f"model.layers.{i}.{linear}" for i in range(model.config.num_hidden_layers) for linear in LINEARS]
    names += ["lm_head"] if packed_head else []
    exact = {}
    for name in names:
        n, k = state.pop(f"{name}.weight").shape
        groups = 1 if group_size == -1 else k // group_size
        q, zeros, scales = random_codes(k, n, groups, sym, scale_dtype, generator)
        packed = packed_tensors(method, q, zeros, scales, group_size, v1)
        state.update({f"{name}.{kind}": t.contiguous() for kind, t in packed.items()})
        exact[name] = exact_weight(q, zeros, scales)
    safetensors_torch.save_file(state, str(path / "model.safetensors"))
    config = model.config.to_dict()
    config["quantization_config"] = quantization_config(method, group_size, v1, sym)
    (path / "config.json").write_text(json.dumps(config))
    reference = {name: t.double() for name, t in state.items() if name.endswith((".weight", ".bias"))}
    reference.update({f"{name}.weight": w for name, w in exact.items()})
    return exact, reference


def reference_logits(model, state: dict) -> torch.Tensor:
    model = model.double()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(TOKENS).logits


def stacked(exact: dict, layer: int, c) -> dict:
    """The runner's stacked layers' exact weights: [q; k; v] (q/k rows in RoPE pair order), [gate; up], o, down."""
    w = {linear: exact[f"model.layers.{layer}.{linear}"] for linear in LINEARS}
    return {"wqkv": torch.cat([pair_rows(w["self_attn.q_proj"], c.num_attention_heads),
                               pair_rows(w["self_attn.k_proj"], c.num_key_value_heads), w["self_attn.v_proj"]]),
            "wo": w["self_attn.o_proj"], "w_gate_up": torch.cat([w["mlp.gate_proj"], w["mlp.up_proj"]]),
            "w_down": w["mlp.down_proj"]}


# (model type, method, group size, GPTQ v1, symmetric, scale dtype, lm_head packed too)
CHECKPOINTS = [
    ("llama", "gptq", 32, True, True, torch.float16, False),
    ("qwen2", "gptq", 64, True, False, torch.float16, True),
    ("llama", "gptq", -1, False, False, torch.float16, False),  # per-channel: one group of K
    ("qwen2", "gptq", 32, False, True, torch.bfloat16, False),
    ("llama", "awq", 32, False, False, torch.float16, True),
    ("qwen2", "awq", 64, False, False, torch.float16, False),
]


@pytest.mark.parametrize("model_type,method,group_size,v1,sym,scale_dtype,packed_head", CHECKPOINTS)
def test_packed_checkpoint_loads_exactly(tmp_path, model_type, method, group_size, v1, sym, scale_dtype,
                                         packed_head):
    model = tiny_model(model_type)
    exact, reference = write_checkpoint(tmp_path, model, method, group_size, v1, sym, scale_dtype, packed_head)
    # float tensors kept dense (the reference has them too); 3 activation digits: the error is the weights' alone
    ours = load_model(str(tmp_path), x_digits=3, group_size=None)
    for i, block in enumerate(ours.blocks):
        for name, weight in stacked(exact, i, model.config).items():
            layer = getattr(block, name)
            assert isinstance(layer, quant.W4A16Linear) and not hasattr(layer, "weight")  # no dequantized copy
            assert torch.equal(quant.dense_weight(layer).double(), weight), (i, name)
            # symmetric: -8 s is exact in the scales' dtype, so they stay 16-bit; -z s of asymmetric zero
            # points needs float32 (the check that these scales exercise the rounding an fp16 cast would do)
            assert layer.scales.dtype == (scale_dtype if sym else torch.float32)
    if packed_head:
        assert torch.equal(quant.dense_weight(ours.lm_head).double(), exact["lm_head"])
    logits, _ = ours(TOKENS)
    expected = reference_logits(model, reference)
    # float32 activations in 3 integer digits (docs/design.md 4.6) against float64: <= 1.1e-5 of the logits'
    # largest magnitude measured over these cases (2 digits, the runner's default: <= 1.2e-3)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_mins_rounded_to_float16_are_not_exact():
    """Negative control for the bit-exact checks: -z s of float16 scales rounded to float16 (what the importer
    did before) changes weights, so those checks can fail."""
    generator = torch.Generator().manual_seed(1)
    q, zeros, scales = random_codes(64, 32, 2, False, torch.float16, generator)
    exact = exact_weight(q, zeros, scales)
    qw = quant.from_gptq(pack_nibbles(q, 0), pack_nibbles(zeros, 1), scales, 32, zeros_minus_one=False)
    assert torch.equal(quant.dequantize(qw).double(), exact)
    rounded = quant.QuantizedWeight(qw.qweight, qw.scales.half(), qw.mins.half(), qw.group_size)
    assert not torch.equal(quant.dequantize(rounded).double(), exact)


def test_gptq_v1_zero_point_zero_survives():
    """v1 words are v2 words minus 0x11111111: a zero point of 0 borrows from the nibble above it, and reading
    nibble by nibble (+1 each) would get both wrong."""
    zeros = torch.tensor([[0, 5, 0, 0, 15, 1, 0, 9]])
    v1 = ((pack_nibbles(zeros, 1).long() - GPTQ_V1_OFFSET) % 2**32).to(torch.uint32).view(torch.int32)
    q = torch.randint(0, 16, (32, 8), generator=torch.Generator().manual_seed(2))
    qw = quant.from_gptq(pack_nibbles(q, 0), v1, torch.ones(1, 8, dtype=torch.float16), 32)
    assert torch.equal(qw.mins, -zeros.T.half())


# ---------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def gptq_files(tmp_path_factory):
    """A GPTQ v2 Llama checkpoint's tensors and config.json, for the error cases to spoil."""
    path = tmp_path_factory.mktemp("gptq")
    write_checkpoint(path, tiny_model("llama"), "gptq", 32)
    config = json.loads((path / "config.json").read_text())
    return safetensors_torch.load_file(str(path / "model.safetensors")), config


def load_spoiled(path, files, quantization: dict, tensors: dict, config: dict = None):
    """The checkpoint with quantization_config and tensors changed (a value None removes the entry)."""
    state, hf = files
    fields = {k: v for k, v in {**hf["quantization_config"], **quantization}.items() if v is not None}
    hf = {**hf, "quantization_config": fields, **(config or {})}
    if not hf["quantization_config"]:
        del hf["quantization_config"]
    state = {k: v for k, v in {**state, **tensors}.items() if v is not None}
    safetensors_torch.save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(hf))
    return load_hf(str(path), group_size=None)


Q_PROJ = "model.layers.0.self_attn.q_proj"
GPTQ_KEYS = dict(quant_method=None, bits=None, group_size=None, desc_act=None, sym=None, checkpoint_format=None)
SPOILED = [  # (quantization_config changes, tensor changes, config changes, the error)
    ({"bits": 8}, {}, {}, "quantization_config.bits is 8: only 4-bit gptq"),
    ({"group_size": None}, {}, {}, "quantization_config has no 'group_size'"),
    ({"group_size": "32"}, {}, {}, "group_size must be a positive integer or -1, got '32'"),
    ({"quant_method": "exl2"}, {}, {}, "quant_method 'exl2' is not supported"),
    ({"checkpoint_format": "marlin"}, {}, {}, "checkpoint_format 'marlin' is not supported"),
    ({"dynamic": {"-:.*down_proj": {}}}, {}, {}, "quantization_config.dynamic"),
    ({"quant_method": "awq", "version": "gemv"}, {}, {}, "version 'gemv' is not supported"),
    ({"quant_method": "awq"}, {}, {}, "quantization_config has no 'version'"),
    ({"group_size": 16}, {}, {}, "layers.0.self_attn.q_proj: group_size 16 cannot be mapped"),
    ({"desc_act": True}, {f"{Q_PROJ}.g_idx": torch.arange(63, -1, -1, dtype=torch.int32) // 32}, {},
     "layers.0.self_attn.q_proj: g_idx is not k // group_size: act-order"),
    ({"desc_act": True}, {f"{Q_PROJ}.g_idx": None}, {}, "tensor layers.0.self_attn.q_proj.g_idx is missing"),
    ({}, {"model.layers.1.self_attn.o_proj.qzeros": None}, {},
     "tensor layers.1.self_attn.o_proj.qzeros is missing"),
    ({}, {"model.layers.0.mlp.down_proj.scales": torch.ones(1, 64, dtype=torch.float16)}, {},
     r"layers.0.mlp.down_proj: scales must be torch.float16 \[4, 64\], got torch.float16 \[1, 64\]"),
    ({}, {"model.layers.0.mlp.down_proj.scales": torch.ones(4, 64)}, {},
     "layers.0.mlp.down_proj: scales must be float16 or bfloat16"),
    ({}, {f"{Q_PROJ}.qweight": torch.zeros(8, 64, dtype=torch.int64)}, {},
     r"layers.0.self_attn.q_proj: qweight must be torch.int32 \[8, 64\], got torch.int64"),
    ({}, {}, {"intermediate_size": 96}, r"layers.0.mlp.gate_proj: weight \[out, in\] must be \[96, 64\]"),
    (GPTQ_KEYS, {}, {}, "layers.0.self_attn.q_proj: .qweight tensors need a quantization_config"),
    ({}, {}, {"quantization_config": "gptq"}, "quantization_config must be an object, got str"),
]


@pytest.mark.parametrize("quantization,tensors,config,error", SPOILED)
def test_bad_quantized_checkpoints(tmp_path, gptq_files, quantization, tensors, config, error):
    with pytest.raises(ValueError, match=error):
        load_spoiled(tmp_path, gptq_files, quantization, tensors, config)


def test_desc_act_with_groups_in_order_loads(tmp_path, gptq_files):
    """desc_act with g_idx = k // G (static groups) is the plain layout: loaded, not refused."""
    model = load_spoiled(tmp_path, gptq_files, {"desc_act": True}, {})
    plain = load_spoiled(tmp_path, gptq_files, {}, {})
    assert torch.equal(quant.dense_weight(model.blocks[0].wqkv), quant.dense_weight(plain.blocks[0].wqkv))
