"""Load a Hugging Face checkpoint directory (config.json + *.safetensors; Llama or Qwen2) into the runner: linear
layers RTN-quantized to W4A16 on load (group_size) or kept dense (group_size None)."""
import glob
import json
import os
from typing import Optional

import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.quant import dense_linear

from .llama import Block, ModelConfig, Transformer, llama3_rope_factors, pair_rows

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


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


def _tensors(path: str) -> dict:
    with optional_imports():
        from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    tensors = {}
    for file in files:
        tensors.update({name: t.float() for name, t in load_file(file).items()})
    return {name.removeprefix("model."): t for name, t in tensors.items()}


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
    config, tensors = _config(hf, max_seq_len), _tensors(path)

    def linear(parts, heads=None, kind="weight"):
        """The named projections stacked along the output dimension; heads[i]: rotate-halves rows to pair."""
        heads = heads or [None] * len(parts)
        names = [f"{part}.{kind}" for part in parts]
        if kind == "bias" and names[0] not in tensors:
            return None
        return torch.cat([t if n is None else pair_rows(t, n) for t, n in zip((tensors[m] for m in names), heads)])

    blocks = []
    for i in range(config.n_layers):
        attn, mlp = f"layers.{i}.self_attn", f"layers.{i}.mlp"
        qkv, heads = [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"], [config.n_heads, config.n_kv_heads, None]
        gate_up = [f"{mlp}.gate_proj", f"{mlp}.up_proj"]
        blocks.append(Block(
            config,
            wqkv=dense_linear(linear(qkv, heads), linear(qkv, heads, "bias"), group_size),
            wo=dense_linear(linear([f"{attn}.o_proj"]), linear([f"{attn}.o_proj"], kind="bias"), group_size),
            w_gate_up=dense_linear(linear(gate_up), None, group_size),
            w_down=dense_linear(linear([f"{mlp}.down_proj"]), None, group_size),
            attn_norm=tensors[f"layers.{i}.input_layernorm.weight"],
            ffn_norm=tensors[f"layers.{i}.post_attention_layernorm.weight"]))
    embedding = tensors["embed_tokens.weight"]
    head_weight = embedding if hf.get("tie_word_embeddings", False) else tensors.get("lm_head.weight", embedding)
    return Transformer(config, embedding, blocks, tensors["norm.weight"], dense_linear(head_weight, None, group_size))
