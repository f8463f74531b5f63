"""Loading Hugging Face checkpoint directories (Llama with Llama-3 RoPE scaling, Qwen2 with attention biases) and
their GGUF forms into the runner: logits equal transformers' on the same weights."""
import json

import numpy as np
import pytest
import torch
from helpers import tiny_hf_model
from specdec_kernels import quant
from specdec_kernels.models import load_gguf, load_hf, load_model
from specdec_kernels.models.llama import pair_rows

TOKENS = torch.tensor([[3, 17, 42, 5, 99, 23, 64, 11, 7, 120, 31, 2]])
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}


def hf_logits(model):
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.mark.parametrize("model_type,rope_scaling", [("llama", None), ("llama", LLAMA3_SCALING), ("qwen2", None)])
def test_hf_directory_dense_matches_transformers(tmp_path, model_type, rope_scaling):
    model = tiny_hf_model(model_type, rope_scaling)
    model.save_pretrained(tmp_path)
    ours, _ = load_hf(str(tmp_path), group_size=None)(TOKENS)
    torch.testing.assert_close(ours, hf_logits(model), atol=1e-4, rtol=1e-4)


def test_llama3_scaling_changes_the_logits(tmp_path):
    """Negative control: the scaled model's logits differ from the unscaled one's (the test above can fail)."""
    model = tiny_hf_model("llama", LLAMA3_SCALING)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("rope_scaling", "rope_parameters"):  # transformers < 5 / >= 5
        if config.get(key):
            config[key] = {"rope_type": "default", "rope_theta": config[key].get("rope_theta", 500.0)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    unscaled, _ = load_hf(str(tmp_path), group_size=None)(TOKENS)
    assert (unscaled - hf_logits(model)).abs().max() > 1e-3


def test_hf_directory_rtn_matches_dequantized_weights(tmp_path):
    """Quantized on load: equal to transformers on the RTN-dequantized weights, and batch-invariant."""
    model = tiny_hf_model("qwen2")
    model.save_pretrained(tmp_path)
    ours_model = load_model(str(tmp_path), group_size=32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(quant.dequantize(quant.quantize_rtn(module.weight, 32)))
    ours, _ = ours_model(TOKENS)
    torch.testing.assert_close(ours, hf_logits(model), atol=1e-3, rtol=1e-3)
    ours_model.reset()
    for i in range(TOKENS.shape[1]):
        alone, _ = ours_model(TOKENS[:, i:i + 1])
        ours_model.commit(1)
        assert torch.equal(alone[0, 0], ours[0, i])


def write_gguf(model, path: str, arch: str):
    """The checkpoint as a float32 GGUF file, laid out as llama.cpp's converter does: Llama q/k rows permuted to
    adjacent RoPE pairs, Qwen2 kept rotating halves."""
    import gguf

    c, state = model.config, {k.removeprefix("model."): v.detach().float() for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base((getattr(c, "rope_parameters", None) or {}).get("rope_theta") or c.rope_theta)
    heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}

    def add(name, tensor):
        writer.add_tensor(name, np.ascontiguousarray(tensor.numpy()))

    add("token_embd.weight", state["embed_tokens.weight"])
    add("output.weight", state["lm_head.weight"])
    add("output_norm.weight", state["norm.weight"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            for kind in ("weight", "bias"):
                tensor = state.get(f"layers.{i}.{hf_name}.{kind}")
                if tensor is None:
                    continue
                proj = hf_name.split(".")[-1]
                if arch == "llama" and proj in heads:
                    tensor = pair_rows(tensor, heads[proj])
                add(f"blk.{i}.{gguf_name}.{kind}", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_llama_and_qwen2_match_transformers(tmp_path, arch):
    model = tiny_hf_model(arch)
    path = str(tmp_path / f"{arch}.gguf")
    write_gguf(model, path, arch)
    ours, _ = load_gguf(path)(TOKENS)
    torch.testing.assert_close(ours, hf_logits(model), atol=1e-4, rtol=1e-4)
    rtn_model = load_gguf(path, dense_group_size=32)  # by option: the float matrices RTN-quantized
    assert isinstance(rtn_model.blocks[0].wqkv, quant.W4A16Linear) and isinstance(rtn_model.lm_head, quant.W4A16Linear)
    rtn, _ = rtn_model(TOKENS)
    assert not torch.equal(rtn, ours) and (rtn - ours).abs().max() < 0.3 * ours.abs().max()  # 4-bit error only


def test_bad_hf_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported"):
        load_hf(str(tmp_path))
    model = tiny_hf_model("llama", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="RoPE scaling 'yarn' is not supported"):
        load_hf(str(tmp_path))
