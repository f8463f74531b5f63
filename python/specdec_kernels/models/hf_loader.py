"""Load a Hugging Face checkpoint directory (config.json + *.safetensors; Llama or Qwen2) into the runner. A GPTQ,
AWQ or specdec_w4a16 checkpoint (config.json's quantization_config) keeps its 4-bit linears exactly (docs/design.md 3.1.1);
float linears are RTN-quantized to W4A16 on load (group_size) or kept dense (group_size None)."""
import glob
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from specdec_kernels.checkpoint.format import QUANT_METHOD, check_quantization_config, quantized_weight
from specdec_kernels.extras import optional_imports
from specdec_kernels.quant import QuantizedWeight, W4A16Linear, dense_linear, from_awq, from_gptq

from .llama import Block, ModelConfig, Transformer, llama3_rope_factors, pair_rows

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
ROW_FIELDS = ("qweight", "scales", "mins")  # a QuantizedWeight's tensors, one row per output feature
GPTQ_FORMATS = {"gptq": True, "gptq_v2": False}  # checkpoint_format -> zero points stored minus one


def _config(hf: dict, max_seq_len: int) -> ModelConfig:
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    # transformers >= 5 writes rope_parameters {rope_theta, rope_type, ...}; earlier versions rope_theta and
    # rope_scaling {rope_type or type, ...}
    scaling = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(scaling.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"RoPE scaling {kind!r} is not supported (Llama-3 scaling is)")
    factors = None
    if kind == "llama3":
        factors = llama3_rope_factors(dim // n_heads, theta, scaling["factor"], scaling["low_freq_factor"],
                                      scaling["high_freq_factor"], scaling["original_max_position_embeddings"])
    return ModelConfig(dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
                       n_kv_heads=hf.get("num_key_value_heads", n_heads), hidden_dim=hf["intermediate_size"],
                       vocab_size=hf["vocab_size"], norm_eps=hf.get("rms_norm_eps", 1e-5), rope_theta=theta,
                       max_seq_len=min(max_seq_len, hf.get("max_position_embeddings", max_seq_len)),
                       rope_factors=factors)


# ---------------------------------------------------------------- quantization_config
@dataclass(frozen=True)
class PackedFormat:
    """How a GPTQ or AWQ checkpoint packs its linears: method "gptq" or "awq", the group size along K (-1: one
    group per row), GPTQ v1's zero points stored minus one, and whether groups may be permuted (desc_act)."""
    method: str
    group_size: int
    zeros_minus_one: bool = False
    desc_act: bool = False


def packed_format(hf: dict) -> Optional[PackedFormat]:
    """config.json's quantization_config, checked; None for a float checkpoint."""
    config = hf.get("quantization_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"quantization_config must be an object, got {type(config).__name__}")

    def required(name: str):
        if name not in config:
            raise ValueError(f"quantization_config has no {name!r}")
        return config[name]

    method = required("quant_method")
    if method == QUANT_METHOD:  # our own (specdec convert): the canonical form as it is
        return PackedFormat(method, check_quantization_config(config))
    if method not in ("gptq", "awq"):
        raise ValueError(f"quantization_config.quant_method {method!r} is not supported (gptq, awq, {QUANT_METHOD})")
    if required("bits") != 4:
        raise ValueError(f"quantization_config.bits is {config['bits']!r}: only 4-bit {method} is supported")
    group_size = required("group_size")
    if type(group_size) is not int or not (group_size > 0 or group_size == -1):
        raise ValueError(f"quantization_config.group_size must be a positive integer or -1, got {group_size!r}")
    if method == "awq":
        version = required("version")
        if str(version).lower() != "gemm":
            raise ValueError(f"quantization_config.version {version!r} is not supported (AWQ's GEMM layout is)")
        return PackedFormat("awq", group_size)
    if config.get("dynamic"):
        raise ValueError("quantization_config.dynamic (per-module GPTQ settings) is not supported")
    checkpoint_format = config.get("checkpoint_format", config.get("format", "gptq"))  # GPTQModel writes both
    if checkpoint_format not in GPTQ_FORMATS:
        raise ValueError(f"quantization_config.checkpoint_format {checkpoint_format!r} is not supported "
                         f"({', '.join(GPTQ_FORMATS)})")
    return PackedFormat("gptq", group_size, GPTQ_FORMATS[checkpoint_format], bool(config.get("desc_act", False)))


# ---------------------------------------------------------------- tensors
class Checkpoint:
    """A directory's *.safetensors tensors by name (without the "model." prefix), each read from its file's
    memory map when asked for, in its stored dtype."""

    def __init__(self, path: str):
        with optional_imports():
            from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        self._where = {}
        for file in files:
            handle = safe_open(file, framework="pt")
            self._where.update({name.removeprefix("model."): (handle, name) for name in handle.keys()})

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise ValueError(f"tensor {name} is missing from the checkpoint")
        handle, stored_name = self._where[name]
        return handle.get_tensor(stored_name)

    def float(self, name: str) -> torch.Tensor:
        return self[name].float()

    def names(self) -> set:
        return set(self._where)


def packed_weight(tensors: Checkpoint, prefix: str, fmt: PackedFormat) -> QuantizedWeight:
    """The GPTQ/AWQ linear `prefix` (its qweight, qzeros, scales, g_idx) in the canonical form, exactly."""
    if fmt.method == QUANT_METHOD:
        return quantized_weight(tensors, prefix, fmt.group_size)
    qweight, qzeros, scales = (tensors[f"{prefix}.{kind}"] for kind in ("qweight", "qzeros", "scales"))
    g_idx = tensors[f"{prefix}.g_idx"] if f"{prefix}.g_idx" in tensors or fmt.desc_act else None
    try:
        if fmt.method == "awq":
            return from_awq(qweight, qzeros, scales, fmt.group_size)
        return from_gptq(qweight, qzeros, scales, fmt.group_size, g_idx, fmt.zeros_minus_one)
    except ValueError as err:
        raise ValueError(f"{prefix}: {err}") from None


def is_packed(tensors: Checkpoint, names: list, fmt: Optional[PackedFormat]) -> bool:
    """Whether the projections `names` (stacked into one layer) are GPTQ/AWQ-packed: all of them or none."""
    packed = [f"{name}.qweight" in tensors for name in names]
    if any(packed) and (fmt is None or not all(packed)):
        raise ValueError(f"{names[0]}: .qweight tensors need a quantization_config in config.json and every one "
                         f"of {', '.join(names)} packed (they are stacked into one layer)")
    return any(packed)


def paired(weight, heads: Optional[int]):
    """The rows of a weight (a float tensor or a QuantizedWeight) of a rotate-halves q/k projection of `heads`
    heads in the runner's pair order (pair_rows); heads None: as they are."""
    if heads is None:
        return weight
    if isinstance(weight, QuantizedWeight):
        return QuantizedWeight(*(pair_rows(getattr(weight, f), heads) for f in ROW_FIELDS), weight.group_size)
    return pair_rows(weight, heads)


def stack_rows(weights: list) -> QuantizedWeight:
    """One QuantizedWeight whose output rows are the parts' rows, in order (torch.cat promotes 16-bit scales and
    mins to float32 where one part has float32 ones: exact)."""
    rows = (torch.cat([getattr(w, field) for w in weights]) for field in ROW_FIELDS)
    return QuantizedWeight(*rows, weights[0].group_size)


# ---------------------------------------------------------------- the model
def load_hf(path: str, group_size: Optional[int] = 128, max_seq_len: int = 2048) -> Transformer:
    """q/k rows (and biases) are reordered from rotate-halves to the runner's adjacent pairs (pair_rows)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no config.json in {path}")
    with open(config_path) as f:
        hf = json.load(f)
    if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model type {hf.get('model_type')!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    c, fmt, tensors = _config(hf, max_seq_len), packed_format(hf), Checkpoint(path)
    if fmt is not None and fmt.method == QUANT_METHOD:
        group_size = None  # its float layers (the output layer) are meant to stay float: modules_not_converted

    def linear(parts: list, in_features: int, heads=None) -> nn.Module:
        """The named projections stacked along the output dimension (parts: (name, out_features)), with their
        biases; heads[i]: part i rotates halves over that many heads, reordered to pairs."""
        names, heads = [name for name, _ in parts], heads or [None] * len(parts)
        bias = None
        if f"{names[0]}.bias" in tensors:
            bias = torch.cat([paired(tensors.float(f"{name}.bias"), n) for name, n in zip(names, heads)])
        packed = is_packed(tensors, names, fmt)
        weights = [paired(packed_weight(tensors, name, fmt) if packed else tensors.float(f"{name}.weight"), n)
                   for name, n in zip(names, heads)]
        for (name, out_features), weight in zip(parts, weights):
            if tuple(weight.shape) != (out_features, in_features):
                raise ValueError(f"{name}: weight [out, in] must be {[out_features, in_features]}, "
                                 f"got {list(weight.shape)}")
        if packed:
            return W4A16Linear(stack_rows(weights), bias)
        return dense_linear(torch.cat(weights), bias, group_size)

    q_rows, kv_rows = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    blocks = []
    for i in range(c.n_layers):
        attn, mlp = f"layers.{i}.self_attn", f"layers.{i}.mlp"
        qkv = [(f"{attn}.q_proj", q_rows), (f"{attn}.k_proj", kv_rows), (f"{attn}.v_proj", kv_rows)]
        blocks.append(Block(
            c,
            wqkv=linear(qkv, c.dim, [c.n_heads, c.n_kv_heads, None]),
            wo=linear([(f"{attn}.o_proj", c.dim)], q_rows),
            w_gate_up=linear([(f"{mlp}.gate_proj", c.hidden_dim), (f"{mlp}.up_proj", c.hidden_dim)], c.dim),
            w_down=linear([(f"{mlp}.down_proj", c.dim)], c.hidden_dim),
            attn_norm=tensors.float(f"layers.{i}.input_layernorm.weight"),
            ffn_norm=tensors.float(f"layers.{i}.post_attention_layernorm.weight")))
    embedding = tensors.float("embed_tokens.weight")
    tied = hf.get("tie_word_embeddings", False) or not {"lm_head.weight", "lm_head.qweight"} & tensors.names()
    head = dense_linear(embedding, None, group_size) if tied else linear([("lm_head", c.vocab_size)], c.dim)
    return Transformer(c, embedding, blocks, tensors.float("norm.weight"), head)
