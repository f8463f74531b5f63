"""Any model the runner loads -> a `specdec_w4a16` folder (`specdec convert SRC OUT_DIR`): a GGUF file (every 4-bit
type the loader takes: exact), a GPTQ or AWQ checkpoint (exact) or a float one (RTN-quantized in groups of
group_size, as the runner would). The runner's layers are the source: its stacked q/k/v and gate/up rows are
split back into transformers' projections and q/k rows turned back from adjacent pairs to rotating halves
(models.llama.half_rows), a row permutation that keeps every 4-bit code, scale and min as it was."""
import json
import os
import shutil

import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.models import load_gguf, load_hf
from specdec_kernels.models.gguf_loader import _field
from specdec_kernels.models.llama import Transformer, half_rows
from specdec_kernels.quant import QuantizedWeight, W4A16Linear, dense_weight
from specdec_kernels.user_cache import write_atomic

from .format import check_quantization_config, dequantized, quantization_config, quantized_tensors

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def convert(source: str, out_dir: str, group_size: int = 128) -> str:
    """Write the folder: config.json, model.safetensors and the source's tokenizer if it has one (config.json
    last: a crash leaves no folder that loads); -> out_dir."""
    facts = source_facts(source)
    model = load_hf(source, group_size=group_size) if os.path.isdir(source) else load_gguf(source)
    tensors, groups = checkpoint_tensors(model, facts["tied"])
    if len(groups) != 1:
        raise ValueError(f"{source}: its 4-bit layers use groups of {sorted(groups)}; a checkpoint has one size")
    tokenizer = load_tokenizer(source) if facts["has_tokenizer"] else None
    config = transformers_config(model, facts, tokenizer, source)
    config["quantization_config"] = quantization_config(groups.pop(), [] if "lm_head.qweight" in tensors else
                                                        ["lm_head"])
    with optional_imports():
        from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    write_atomic(os.path.join(out_dir, "model.safetensors"),
                 lambda path: save_file(tensors, path, metadata={"format": "pt"}))

    def write_config(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    write_atomic(os.path.join(out_dir, "config.json"), write_config)
    return out_dir


def source_facts(source: str) -> dict:
    """model_type, hf_config (a directory's config.json, else None), tied (the output layer is the embedding),
    context (a GGUF file's context length) and has_tokenizer (the folder gets a copy then). Refused here: what a
    transformers config cannot state."""
    if os.path.isdir(source):
        with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
            hf = json.load(f)
        return {"model_type": hf.get("model_type"), "hf_config": hf, "tied": bool(hf.get("tie_word_embeddings")),
                "context": None, "has_tokenizer": any(os.path.exists(os.path.join(source, name))
                                                      for name in ("tokenizer.json", "tokenizer_config.json"))}
    import gguf

    reader = gguf.GGUFReader(source)
    arch = _field(reader, "general.architecture", str)
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:  # Llama-3 scaling: GGUF keeps the divisors, not the parameters transformers reads
        raise ValueError(f"{source}: Llama-3 RoPE scaling from a GGUF file cannot be stated in a transformers config")
    return {"model_type": arch, "hf_config": None, "tied": "output.weight" not in names,
            "context": _field(reader, f"{arch}.context_length", int, 2048),
            "has_tokenizer": "tokenizer.ggml.model" in reader.fields}


def checkpoint_tensors(model: Transformer, tied: bool):
    """-> (transformers-named tensors, the group sizes of the 4-bit layers)."""
    c = model.config
    q_rows, kv_rows = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    tensors, groups = {"model.embed_tokens.weight": model.embedding.float(), "model.norm.weight": model.out_norm}, set()
    if not tied:  # an output layer that is not 4-bit (GGUF's Q8_0 or Q6_K, say) is stored as floats
        store(tensors, groups, model.lm_head, [("lm_head", c.vocab_size, None)], float_ok=True)
    for i, block in enumerate(model.blocks):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        store(tensors, groups, block.wqkv, [(f"{attn}.q_proj", q_rows, c.n_heads),
                                            (f"{attn}.k_proj", kv_rows, c.n_kv_heads), (f"{attn}.v_proj", kv_rows, None)])
        store(tensors, groups, block.wo, [(f"{attn}.o_proj", c.dim, None)])
        store(tensors, groups, block.w_gate_up, [(f"{mlp}.gate_proj", c.hidden_dim, None),
                                                 (f"{mlp}.up_proj", c.hidden_dim, None)])
        store(tensors, groups, block.w_down, [(f"{mlp}.down_proj", c.dim, None)])
        tensors[f"model.layers.{i}.input_layernorm.weight"] = block.attn_norm
        tensors[f"model.layers.{i}.post_attention_layernorm.weight"] = block.ffn_norm
    return {name: t.contiguous() for name, t in tensors.items()}, groups


def store(tensors: dict, groups: set, layer, parts: list, float_ok: bool = False) -> None:
    """The runner's layer split along its output rows into parts (module path, rows, and the number of heads
    whose rows go back to rotating halves, or None)."""
    quantized = isinstance(layer, W4A16Linear)
    if not quantized and not float_ok:
        raise ValueError(f"{parts[0][0]}: a {type(layer).__name__} is not 4-bit; only 4-bit linears convert exactly")
    weight = (layer.qweight, layer.scales, layer.mins) if quantized else (dense_weight(layer),)
    bias, start = layer._buffers.get("bias"), 0
    for path, rows, heads in parts:
        span, start = slice(start, start + rows), start + rows

        def cut(t):
            return t[span] if heads is None else half_rows(t[span], heads)

        if quantized:
            groups.add(layer.group_size)
            tensors.update(quantized_tensors(path, QuantizedWeight(*map(cut, weight), layer.group_size)))
        else:
            tensors[f"{path}.weight"] = cut(weight[0])
        if bias is not None:
            tensors[f"{path}.bias"] = cut(bias)


def transformers_config(model: Transformer, facts: dict, tokenizer, source: str) -> dict:
    model_type = facts["model_type"]
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{source}: model type {model_type!r} does not convert (supported: "
                         f"{', '.join(ARCHITECTURES)})")
    if facts["hf_config"] is not None:  # the source's own config (RoPE settings and all), less its quantization
        config = {k: v for k, v in facts["hf_config"].items() if k != "quantization_config"}
    else:
        with optional_imports():
            from transformers import AutoConfig

        c = model.config
        fields = dict(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                      head_dim=c.head_dim, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                      max_position_embeddings=facts["context"], tie_word_embeddings=facts["tied"])
        if tokenizer is not None:
            fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        if model_type == "llama":
            fields["attention_bias"] = model.blocks[0].wqkv._buffers.get("bias") is not None
        config = AutoConfig.for_model(model_type, **fields).to_diff_dict()
    config.update(architectures=[ARCHITECTURES[model_type]], dtype="float32", tie_word_embeddings=facts["tied"])
    return config


def load_tokenizer(source: str):
    from specdec_kernels.engines.transformers import load_tokenizer as load

    return load(source)


def dequantize_folder(quantized: str, folder: str) -> str:
    """The specdec_w4a16 folder's model as an ordinary float32 transformers checkpoint in `folder`: the same
    weights (the baseline that engines' unquantized runs use); -> folder."""
    with optional_imports():
        from safetensors.torch import load_file, save_file

    with open(os.path.join(quantized, "config.json")) as f:
        config = json.load(f)
    group_size = check_quantization_config(config.pop("quantization_config"))
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(quantized):
        if name.startswith("tokenizer") or name.endswith(".jinja"):
            shutil.copy(os.path.join(quantized, name), folder)
    save_file(dequantized(load_file(os.path.join(quantized, "model.safetensors")), group_size),
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return folder
