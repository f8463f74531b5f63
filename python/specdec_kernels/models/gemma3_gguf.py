"""A Gemma 3 GGUF file (general.architecture "gemma3") as the Gemma3 runner, read as llama.cpp reads it.

The file does not store what llama.cpp fixes for the architecture: every 6th layer global, the others a sliding
window with RoPE base 10000, and the attention scale 1/sqrt(head_dim) (1/sqrt(dim / heads) for the 27B). Its norm
weights already hold Gemma's 1 + w (llama.cpp's converter adds the 1; transformers subtracts it when it loads a
GGUF file). q/k rows rotate halves (llama.cpp's "neox"): the loader reorders them, and the q/k norm weights
alike, into the runner's adjacent pairs.
"""
from typing import Optional

from specdec_kernels.tree import MAX_TREE_NODES

from .gemma3 import Gemma3, Gemma3Block, Gemma3Config
from .gguf_loader import _field, check_config, dense, linear_from, shaped
from .llama import pair_rows

NORMS = ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")  # [dim] each; attn_q/k_norm [head_dim]
LAYERS_OF_27B = 62  # llama.cpp scales its queries by 1/sqrt(dim / heads), not 1/sqrt(head_dim)


def gemma3_config(reader, max_seq_len: int, vocab_size: int) -> Gemma3Config:
    """The runner's config from the file's metadata, checked: a ValueError names what the runner cannot build."""
    scaling = _field(reader, "gemma3.rope.scaling.type", str, "none")
    if scaling != "none":  # the larger Gemma 3 scale their global RoPE: not implemented, so refused
        raise ValueError(f"RoPE scaling {scaling!r} is not supported for gemma3")
    head_dim = _field(reader, "gemma3.attention.key_length", int)
    if _field(reader, "gemma3.attention.value_length", int, head_dim) != head_dim:
        raise ValueError("gemma3.attention.value_length must equal key_length")
    dim, n_heads, n_layers = (_field(reader, f"gemma3.{key}", int) for key in
                              ("embedding_length", "attention.head_count", "block_count"))
    config = Gemma3Config(
        dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=_field(reader, "gemma3.attention.head_count_kv", int),
        head_dim=head_dim, hidden_dim=_field(reader, "gemma3.feed_forward_length", int), vocab_size=vocab_size,
        sliding_window=_field(reader, "gemma3.attention.sliding_window", int),
        query_scale=(dim / n_heads if n_layers == LAYERS_OF_27B else head_dim) ** -0.5,
        norm_eps=_field(reader, "gemma3.attention.layer_norm_rms_epsilon", float),
        rope_theta=_field(reader, "gemma3.rope.freq_base", float, 1_000_000.0),
        max_seq_len=min(max_seq_len, _field(reader, "gemma3.context_length", int)))
    check_config(config)
    if config.sliding_window <= MAX_TREE_NODES:  # windowed_attention assumes a tree fits in the window
        raise ValueError(f"sliding window {config.sliding_window} must exceed {MAX_TREE_NODES} tokens")
    return config


def block_shapes(c: Gemma3Config) -> dict:
    """Each block tensor's shape, rows first."""
    q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"attn_q": (q_dim, c.dim), "attn_k": (kv_dim, c.dim), "attn_v": (kv_dim, c.dim),
            "attn_output": (c.dim, q_dim), "ffn_gate": (c.hidden_dim, c.dim), "ffn_up": (c.hidden_dim, c.dim),
            "ffn_down": (c.dim, c.hidden_dim), "attn_q_norm": (c.head_dim,), "attn_k_norm": (c.head_dim,),
            **{norm: (c.dim,) for norm in NORMS}}


def gemma3_block(tensors: dict, i: int, c: Gemma3Config, dense_group_size: Optional[int]) -> Gemma3Block:
    shapes = block_shapes(c)

    def weight(name):
        return shaped(tensors, f"blk.{i}.{name}.weight", shapes[name])

    def linear(names, pair_heads=None):
        return linear_from([weight(n) for n in names], None, pair_heads, dense_group_size)

    norms = {name: dense(weight(name)) for name in NORMS}
    norms.update({name: pair_rows(dense(weight(name)), 1) for name in ("attn_q_norm", "attn_k_norm")})
    return Gemma3Block(c, c.is_sliding(i), linear(("attn_q", "attn_k", "attn_v"), [c.n_heads, c.n_kv_heads, None]),
                       linear(("attn_output",)), linear(("ffn_gate", "ffn_up")), linear(("ffn_down",)), norms)


def gemma3_from(reader, max_seq_len: int, dense_group_size: Optional[int]) -> Gemma3:
    tensors = {t.name: t for t in reader.tensors}
    token_embd = shaped(tensors, "token_embd.weight", (None, _field(reader, "gemma3.embedding_length", int)))
    config = gemma3_config(reader, max_seq_len, int(token_embd.shape[-1]))
    if "output.weight" in tensors:  # Gemma ties its output layer to the embedding; the runner relies on it
        raise ValueError("an untied output.weight is not supported for gemma3")
    blocks = [gemma3_block(tensors, i, config, dense_group_size) for i in range(config.n_layers)]
    head = linear_from([token_embd], dense_group_size=dense_group_size)
    return Gemma3(config, blocks, dense(shaped(tensors, "output_norm.weight", (config.dim,))), head)
