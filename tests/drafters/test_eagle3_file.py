"""The EAGLE-3 head's public file (drafters.eagle3_file): a round trip is exact, a forward written in the Hugging
Face convention straight from the saved folder gives the head's logits (what other engines compute), d2t/t2d
encode the draft vocabulary, and a damaged or foreign folder is a ValueError naming what is wrong."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from specdec_kernels.drafters import Eagle3Head, is_eagle3_folder, load_eagle3, save_eagle3
from specdec_kernels.models import Transformer
from specdec_kernels.models.llama import llama3_rope_factors
from torch.nn import functional as F

VOCAB, DRAFT_VOCAB, FEATURE_LAYERS = 40, 24, (1, 3, 5)
# Llama-3 scaling with two frequencies of the tiny head (head_dim 16) between kept and divided
LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0,
                  "original_max_position_embeddings": 1000}


@pytest.fixture(scope="module")
def target(tiny):
    """The tiny target's layer six times over: enough layers for three distinct feature layers."""
    config = replace(tiny.config, n_layers=6)
    return Transformer(config, tiny.embedding, [tiny.blocks[0]] * 6, tiny.out_norm, tiny.lm_head)


def random_head(target, draft_ids=None, rope_scaling=None) -> Eagle3Head:
    """A head over draft_ids (default: 24 target ids in no order) with random weights, all exact in float16."""
    torch.manual_seed(0)
    ids = torch.randperm(VOCAB)[:DRAFT_VOCAB] if draft_ids is None else draft_ids
    head = Eagle3Head.from_target(target, ids, FEATURE_LAYERS)
    if rope_scaling:
        c = head.config
        head.config = replace(c, rope_factors=llama3_rope_factors(c.head_dim, c.rope_theta, **rope_scaling))
    with torch.no_grad():
        for p in head.parameters():
            noise = 0.3 * torch.randn_like(p) if p.dim() == 1 else 0  # norms start as ones: make each differ
            p.copy_((p + noise).half().float())
    return head.eval()


def random_inputs(t=7):
    """Token embeddings [1, t, 64] and fused features [1, t, 3 * 64]."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, t, 64, generator=generator), torch.randn(1, t, 3 * 64, generator=generator)


def saved(head, folder, **metadata) -> str:
    save_eagle3(head, str(folder), target_vocab=VOCAB, **metadata)
    return str(folder)


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_SCALING])
def test_round_trip_is_exact(target, tmp_path, rope_scaling):
    head = random_head(target, rope_scaling=rope_scaling)
    metadata = {"command": "train eagle3 --epochs 2", "held_out": {"accepted": 2.5}}
    loaded = load_eagle3(saved(head, tmp_path / "head", **metadata), target)
    assert loaded.config == head.config and loaded.feature_layers == FEATURE_LAYERS and loaded.metadata == metadata
    theirs = loaded.state_dict()
    for name, tensor in head.state_dict().items():
        assert torch.equal(theirs[name], tensor), name
    assert torch.equal(loaded(*random_inputs())[1], head(*random_inputs())[1])
    assert is_eagle3_folder(str(tmp_path / "head")) and not is_eagle3_folder(str(tmp_path))


# ---------------------------------------------------------------- what other engines read
def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


def reference_logits(folder: str, embeds: torch.Tensor, features: torch.Tensor):
    """The head's forward in the Hugging Face convention (as vLLM's llama_eagle3), from the folder alone:
    -> (logits [1, T, draft vocab], target ids of their argmax)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = json.loads(Path(folder, "config.json").read_text())
    w = {name: t.float() if t.is_floating_point() else t
         for name, t in load_file(f"{folder}/model.safetensors").items()}
    heads, kv_heads, head_dim, eps = (hf[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim",
                                                       "rms_norm_eps"))

    def norm(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w[name]

    def attention_heads(x, proj, n):
        return (x @ w[f"midlayer.self_attn.{proj}.weight"].T).view(1, t, n, head_dim).transpose(1, 2)

    t = embeds.shape[1]
    hidden = features @ w["fc.weight"].T
    x = torch.cat([norm(embeds, "midlayer.input_layernorm.weight"), norm(hidden, "midlayer.hidden_norm.weight")], -1)
    q = attention_heads(x, "q_proj", heads)
    k, v = attention_heads(x, "k_proj", kv_heads), attention_heads(x, "v_proj", kv_heads)
    cos, sin = LlamaRotaryEmbedding(LlamaConfig.from_pretrained(folder))(x, torch.arange(t)[None])
    cos, sin = cos[:, None], sin[:, None]
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    h = hidden + attended.transpose(1, 2).reshape(1, t, -1) @ w["midlayer.self_attn.o_proj.weight"].T
    m = norm(h, "midlayer.post_attention_layernorm.weight")
    h = h + (F.silu(m @ w["midlayer.mlp.gate_proj.weight"].T) * (m @ w["midlayer.mlp.up_proj.weight"].T)) @ \
        w["midlayer.mlp.down_proj.weight"].T
    logits = norm(h, "norm.weight") @ w["lm_head.weight"].T
    draft_ids = logits.argmax(-1)
    return logits, draft_ids + w["d2t"][draft_ids]


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_SCALING])
def test_saved_folder_is_the_public_layout(target, tmp_path, rope_scaling):
    head = random_head(target, rope_scaling=rope_scaling)
    embeds, features = random_inputs()
    theirs, target_ids = reference_logits(saved(head, tmp_path), embeds, features)
    with torch.no_grad():
        ours = head(embeds, features)[1]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert torch.equal(target_ids, head.draft_to_target[ours.argmax(-1)])


def test_rope_factors_config_json_cannot_describe_are_refused(target, tmp_path):
    """Llama-3 scaling with a single frequency between kept and divided is not recovered (two fix it): refused,
    as are factors of no Llama-3 scaling; nothing is written."""
    head = random_head(target)
    single = {**LLAMA3_SCALING, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    for factors in (llama3_rope_factors(16, 10000.0, **single), (1.0, 2.0, 1.5, 8.0, 8.0, 8.0, 3.0, 8.0)):
        head.config = replace(head.config, rope_factors=factors)
        with pytest.raises(ValueError, match="RoPE factors"):
            saved(head, tmp_path / "head")
    assert not (tmp_path / "head").exists()


# ---------------------------------------------------------------- the draft vocabulary
def test_d2t_and_t2d_encode_the_draft_vocabulary(target, tmp_path):
    head = random_head(target)
    tensors = load_file(f"{saved(head, tmp_path)}/model.safetensors")
    assert torch.equal(tensors["d2t"] + torch.arange(DRAFT_VOCAB), head.draft_to_target)
    assert int(tensors["t2d"].sum()) == DRAFT_VOCAB and bool(tensors["t2d"][head.draft_to_target].all())


def test_a_file_without_d2t_and_t2d_drafts_the_whole_vocabulary(target, tmp_path):
    folder = saved(random_head(target, draft_ids=torch.arange(VOCAB)), tmp_path)
    edit_tensors(folder, lambda t: (t.pop("d2t"), t.pop("t2d")))
    edit_config(folder, lambda c: c.pop("draft_vocab_size"))  # as published full-vocabulary heads
    assert torch.equal(load_eagle3(folder, target).draft_to_target, torch.arange(VOCAB))


# ---------------------------------------------------------------- damaged and foreign folders
def edit_config(folder, change):
    with open(f"{folder}/config.json") as f:
        config = json.load(f)
    change(config)
    with open(f"{folder}/config.json", "w") as f:
        json.dump(config, f)


def edit_tensors(folder, change):
    tensors = load_file(f"{folder}/model.safetensors")
    change(tensors)
    save_file(tensors, f"{folder}/model.safetensors")


def flip_first_t2d_entry(tensors):
    tensors["t2d"][0] = ~tensors["t2d"][0]


def read_past_the_last_layer(config):
    config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [1, 3, 6]  # the target has layers 0..5


def drop_a_key_head(tensors):
    """k_proj with one of its two heads' rows (the stacked wqkv would be wrong too, but not name it)."""
    name = "midlayer.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:16].clone()


DAMAGES = {
    "missing field": (lambda f: edit_config(f, lambda c: c.pop("intermediate_size")), "intermediate_size"),
    "architecture": (lambda f: edit_config(f, lambda c: c.update(architectures=["LlamaForCausalLM"])), "architectures"),
    "vocab_size": (lambda f: edit_config(f, lambda c: c.update(vocab_size=VOCAB + 1)), "vocab_size"),
    "hidden size": (lambda f: edit_config(f, lambda c: c.update(hidden_size=32)), "hidden_size"),
    "aux ids": (lambda f: edit_config(f, read_past_the_last_layer), "eagle_aux_hidden_state_layer_ids"),
    "missing tensor": (lambda f: edit_tensors(f, lambda t: t.pop("midlayer.hidden_norm.weight")),
                       "midlayer.hidden_norm.weight"),
    "tensor shape": (lambda f: edit_tensors(f, drop_a_key_head), "k_proj"),
    "t2d": (lambda f: edit_tensors(f, flip_first_t2d_entry), "t2d"),
    "d2t": (lambda f: edit_tensors(f, lambda t: t["d2t"].add_(VOCAB)), "d2t"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_folder_is_a_value_error_naming_what(target, tmp_path, damage):
    folder = saved(random_head(target), tmp_path)
    load_eagle3(folder, target)  # whole, it loads
    spoil, named = DAMAGES[damage]
    spoil(folder)
    with pytest.raises(ValueError, match=named) as error:
        load_eagle3(folder, target)
    assert folder in str(error.value)


def test_a_file_is_not_a_head_folder(target, tmp_path):
    path = tmp_path / "head.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        load_eagle3(str(path), target)
    assert not is_eagle3_folder(str(path))
