"""Tiny random models for the runner and drafter tests."""
import numpy as np


def write_tiny_gguf(path, arch="llama", q4=True, logit_scale=1.0, context_length=128):
    """A one-layer Llama GGUF with random weights (vocabulary 40, tied head); logit_scale multiplies the
    embedding (= the head) and the final norm: larger values make the next-token distribution peakier."""
    import gguf

    rng = np.random.default_rng(0)
    dim, hidden, heads, kv_heads, vocab = 64, 96, 4, 2, 40
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(context_length)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)

    def add(name, shape, quantize, scale=0.1):
        w = rng.standard_normal(shape).astype(np.float32) * scale
        if quantize:
            writer.add_tensor(name, gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1),
                              raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            writer.add_tensor(name, w)

    add("token_embd.weight", (vocab, dim), False, 0.1 * logit_scale)
    add("output_norm.weight", (dim,), False, 0.1 * logit_scale)
    add("blk.0.attn_norm.weight", (dim,), False)
    add("blk.0.ffn_norm.weight", (dim,), False)
    for name, shape in [("attn_q", (dim, dim)), ("attn_k", (dim // 2, dim)), ("attn_v", (dim // 2, dim)),
                        ("attn_output", (dim, dim)), ("ffn_gate", (hidden, dim)), ("ffn_up", (hidden, dim)),
                        ("ffn_down", (dim, hidden))]:
        add(f"blk.0.{name}.weight", shape, q4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
