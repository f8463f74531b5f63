"""The EAGLE-3 head's file in the public layout that vLLM, SGLang and the EAGLE reference code read: a folder with
config.json (LlamaForCausalLMEagle3) and model.safetensors (float16, `midlayer.*` names, q/k rows in the
rotate-halves RoPE layout, d2t/t2d for the draft vocabulary).

The aux hidden state layer ids (config.json's eagle_config, vLLM's convention) are the residual streams entering
those layers: our feature_layers. Our own metadata (the training command, held-out metrics) is config.json's
"specdec" entry. Nothing is pickled; everything read is checked against the target before a head is built, and
each failure is a ValueError naming the folder and the field or tensor.
"""
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.models.hf_loader import _config as hf_config
from specdec_kernels.models.llama import ModelConfig, base_frequencies, half_rows, llama3_rope_factors, pair_rows
from specdec_kernels.user_cache import write_atomic

from .eagle3_head import Eagle3Head, check_feature_layers, default_feature_layers
from .weights_file import assign_weights, fits

ARCHITECTURE = "LlamaForCausalLMEagle3"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # published heads come in each
# Our parameter -> its tensors in the file, stacked by rows in this order.
PUBLIC_NAMES = {
    "fc.weight": ("fc.weight",),
    "input_norm": ("midlayer.input_layernorm.weight",),
    "hidden_norm": ("midlayer.hidden_norm.weight",),
    "wqkv.weight": ("midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
                    "midlayer.self_attn.v_proj.weight"),
    "wo.weight": ("midlayer.self_attn.o_proj.weight",),
    "ffn_norm": ("midlayer.post_attention_layernorm.weight",),
    "w_gate_up.weight": ("midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight"),
    "w_down.weight": ("midlayer.mlp.down_proj.weight",),
    "norm": ("norm.weight",),
    "lm_head.weight": ("lm_head.weight",),
}


def public_shapes(c: ModelConfig, n_features: int) -> dict:
    """The file's weights and their shapes for a head of config c reading n_features streams."""
    dim, kv, hidden = c.dim, c.n_kv_heads * c.head_dim, c.hidden_dim
    return {"fc.weight": (dim, n_features * dim), "midlayer.input_layernorm.weight": (dim,),
            "midlayer.hidden_norm.weight": (dim,), "midlayer.self_attn.q_proj.weight": (dim, 2 * dim),
            "midlayer.self_attn.k_proj.weight": (kv, 2 * dim), "midlayer.self_attn.v_proj.weight": (kv, 2 * dim),
            "midlayer.self_attn.o_proj.weight": (dim, dim), "midlayer.post_attention_layernorm.weight": (dim,),
            "midlayer.mlp.gate_proj.weight": (hidden, dim), "midlayer.mlp.up_proj.weight": (hidden, dim),
            "midlayer.mlp.down_proj.weight": (dim, hidden), "norm.weight": (dim,),
            "lm_head.weight": (c.vocab_size, dim)}


def rotating_heads(c: ModelConfig) -> dict:
    """The file's q/k projections (RoPE rotates halves of their heads' rows) -> their numbers of heads."""
    return {"midlayer.self_attn.q_proj.weight": c.n_heads, "midlayer.self_attn.k_proj.weight": c.n_kv_heads}


# ---------------------------------------------------------------- saving
def save_eagle3(head: Eagle3Head, folder: str, *, target_vocab: int, **metadata) -> None:
    """Write `head` (whose target has `target_vocab` tokens) to `folder` (created). An older config.json goes
    first and the new one last: a crash leaves no folder that loads a mix of two saves, and each file is whole
    or absent (write_atomic)."""
    with optional_imports():
        from safetensors.torch import save_file
    config = json.dumps(public_config(head, target_vocab, metadata), indent=2)
    tensors = public_tensors(head, target_vocab)
    os.makedirs(folder, exist_ok=True)
    config_path = os.path.join(folder, CONFIG)
    if os.path.exists(config_path):
        os.remove(config_path)
    write_atomic(os.path.join(folder, WEIGHTS), lambda path: save_file(tensors, path))
    write_atomic(config_path, lambda path: Path(path).write_text(config))


def public_config(head: Eagle3Head, target_vocab: int, metadata: dict) -> dict:
    c = head.config
    config = {"architectures": [ARCHITECTURE], "model_type": "llama", "hidden_size": c.dim,
              "intermediate_size": c.hidden_dim, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
              "head_dim": c.head_dim, "num_hidden_layers": 1, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
              "max_position_embeddings": c.max_seq_len, "vocab_size": target_vocab, "draft_vocab_size": c.vocab_size,
              "tie_word_embeddings": False, "torch_dtype": "float16", "hidden_act": "silu",
              # the streams come in layer order (Transformer.forward's capture), whatever feature_layers' order
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": sorted(head.feature_layers),
                               "use_aux_hidden_state": True}}
    if c.rope_factors is not None:
        config["rope_scaling"] = llama3_scaling(c)
    return {**config, "specdec": metadata}


def llama3_scaling(c: ModelConfig) -> dict:
    """The Llama-3 rope_scaling whose per-frequency divisors are c.rope_factors; ValueError where none is found.

    Frequency j is kept (divisor 1), divided by `factor` (the largest divisor), or between: there
    1 / divisor_j = blend_j + (1 - blend_j) / factor, and blend_j = (original / wavelength_j - low) / (high - low)
    is linear in 1 / wavelength_j. Two frequencies between give the line; it fixes only original / (high - low)
    and low / (high - low), so low_freq_factor = 1 is as good as the target's own (the divisors are the same).
    """
    refusal = ValueError(f"the head's RoPE factors {c.rope_factors} are not Llama-3 scaling with two or more "
                         "frequencies between kept and divided: config.json cannot describe them")
    factors = torch.tensor(c.rope_factors, dtype=torch.float64)
    if len(factors) != c.head_dim // 2 or float(factors.max()) <= 1:
        raise refusal
    inverse_wavelengths = base_frequencies(c.head_dim, c.rope_theta).double() / (2 * math.pi)
    factor = float(factors.max())
    blend = (1 / factors - 1 / factor) / (1 - 1 / factor)
    between = ((blend > 1e-9) & (blend < 1 - 1e-9)).nonzero().flatten()
    if len(between) < 2:
        raise refusal
    first, last = between[0], between[-1]
    slope = float((blend[last] - blend[first]) / (inverse_wavelengths[last] - inverse_wavelengths[first]))
    width = -1 / float(blend[first] - slope * inverse_wavelengths[first])  # (high - low) / low
    scaling = {"factor": round(factor, 6), "low_freq_factor": 1.0, "high_freq_factor": round(1 + width, 6),
               "original_max_position_embeddings": round(slope * width)}
    again = llama3_rope_factors(c.head_dim, c.rope_theta, **scaling)
    if not torch.allclose(torch.tensor(again, dtype=torch.float64), factors, rtol=1e-6, atol=0):
        raise refusal
    return {"rope_type": "llama3", **scaling}


def public_tensors(head: Eagle3Head, target_vocab: int) -> dict:
    """The head's state as the file's float16 tensors, with d2t (target id - draft id) and t2d."""
    c, state = head.config, head.state_dict()
    shapes, rotating = public_shapes(c, len(head.feature_layers)), rotating_heads(c)
    tensors = {}
    for ours, names in PUBLIC_NAMES.items():
        for name, rows in zip(names, state[ours].split([shapes[part][0] for part in names])):
            tensors[name] = (half_rows(rows, rotating[name]) if name in rotating else rows).half()
    ids = head.draft_to_target
    tensors["d2t"] = ids - torch.arange(len(ids))
    tensors["t2d"] = torch.zeros(target_vocab, dtype=torch.bool).index_fill_(0, ids, True)
    return tensors


# ---------------------------------------------------------------- loading
def is_eagle3_folder(path: str) -> bool:
    """Whether `path` is a folder whose config.json names the EAGLE-3 architecture (not an EAGLE-1/2 head file)."""
    try:
        with open(os.path.join(path, CONFIG)) as f:
            return names_eagle3(json.load(f))
    except (OSError, ValueError, RecursionError):
        return False


def names_eagle3(config) -> bool:
    return isinstance(config, dict) and isinstance(config.get("architectures"), list) and \
        ARCHITECTURE in config["architectures"]


def load_eagle3(folder: str, target) -> Eagle3Head:
    """The head in `folder` for `target` (a models.Transformer); ValueError naming the folder and the field or
    tensor where the folder is not a well-formed EAGLE-3 head for this target. Tensors other than the head's
    (a published head's embed_tokens: the target's embedding serves) are not read. config.json's "specdec"
    entry is on `head.metadata`."""
    config_path, weights_path = os.path.join(folder, CONFIG), os.path.join(folder, WEIGHTS)
    hf = read_config(folder)
    metadata = hf.get("specdec", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{config_path}: specdec must be a JSON object")
    config, layers = head_config(hf, target.config, config_path)
    shapes = public_shapes(config, len(layers))
    tensors = read_tensors(weights_path, {**shapes, "d2t": (config.vocab_size,), "t2d": (target.config.vocab_size,)})
    ids = draft_to_target(tensors.pop("d2t", None), tensors.pop("t2d", None), config.vocab_size,
                          target.config.vocab_size, weights_path)
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ValueError(f"{weights_path}: tensors {missing} are missing")
    rotating = rotating_heads(config)
    weights = {ours: torch.cat([pair_rows(tensors[n], rotating[n]) if n in rotating else tensors[n] for n in names])
               for ours, names in PUBLIC_NAMES.items()}
    with torch.device("meta"):  # sized by the config: nothing is allocated before the file's tensors match it
        head = Eagle3Head(config, layers, ids)
    assign_weights(head, weights, torch.float32, weights_path, built=("draft_to_target",))
    head.metadata = metadata
    return head.eval()


def read_config(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder: an EAGLE-3 head is a folder with {CONFIG} and {WEIGHTS}")
    path = os.path.join(folder, CONFIG)
    try:
        with open(path) as f:
            hf = json.load(f)
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise ValueError(f"{path} is missing or not JSON: {err}") from err
    if not names_eagle3(hf):
        found = hf.get("architectures") if isinstance(hf, dict) else hf
        raise ValueError(f"{path}: architectures must name {ARCHITECTURE}, got {found!r}")
    return hf


def head_config(hf: dict, c: ModelConfig, path: str) -> tuple:
    """-> (the head's ModelConfig, its feature layers) from config.json, checked against target config c."""
    def field(name: str, kind: type = int, default=None):
        value = hf.get(name, default)
        if value is None:
            raise ValueError(f"{path}: field {name} is missing")
        if not fits(value, kind) or value <= 0:
            raise ValueError(f"{path}: field {name} = {value!r} is not a positive {kind.__name__}")
        return value

    dim, heads = field("hidden_size"), field("num_attention_heads")
    shape = {"hidden_size": (dim, c.dim), "num_attention_heads": (heads, c.n_heads),
             "num_key_value_heads": (field("num_key_value_heads", default=heads), c.n_kv_heads),
             "head_dim": (field("head_dim", default=dim // heads), c.head_dim),
             "vocab_size": (field("vocab_size"), c.vocab_size)}
    for name, (value, theirs) in shape.items():
        if value != theirs:
            raise ValueError(f"{path}: {name} is {value}, the target's is {theirs}")
    if field("num_hidden_layers") != 1:
        raise ValueError(f"{path}: num_hidden_layers is {hf['num_hidden_layers']}, an EAGLE-3 head has 1")
    field("intermediate_size")
    for name in ("rms_norm_eps", "rope_theta"):
        if name in hf:  # absent: hf_loader's defaults
            field(name, float)
    draft_vocab = field("draft_vocab_size", default=c.vocab_size)  # absent: the full vocabulary
    if draft_vocab > c.vocab_size:
        raise ValueError(f"{path}: draft_vocab_size {draft_vocab} exceeds vocab_size {c.vocab_size}")
    try:
        config = hf_config(hf, c.max_seq_len)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        scaling = hf.get("rope_parameters") or hf.get("rope_scaling")
        raise ValueError(f"{path}: rope_scaling {scaling!r} is not usable: {err!r}") from err
    # the head runs along the target's context, whatever length it was trained on
    return replace(config, vocab_size=draft_vocab, max_seq_len=c.max_seq_len), aux_layers(hf, c.n_layers, path)


def aux_layers(hf: dict, n_layers: int, path: str) -> tuple:
    """eagle_config's aux hidden state layer ids (absent: vLLM's default), ascending: engines concatenate the
    streams in layer order whatever the list's."""
    eagle = hf.get("eagle_config", {})
    name = "eagle_config.eagle_aux_hidden_state_layer_ids"
    if not isinstance(eagle, dict) or eagle.get("use_aux_hidden_state", True) is not True:
        raise ValueError(f"{path}: eagle_config must be an object with use_aux_hidden_state true, got {eagle!r}")
    layers = eagle.get("eagle_aux_hidden_state_layer_ids", default_feature_layers(n_layers))
    if not isinstance(layers, (list, tuple)) or not all(type(i) is int for i in layers):
        raise ValueError(f"{path}: {name} must be a list of ints, got {layers!r}")
    try:
        check_feature_layers(layers, n_layers)
    except ValueError as err:
        raise ValueError(f"{path}: {name}: {err} (the target has {n_layers} layers)") from err
    return tuple(sorted(layers))


def read_tensors(path: str, shapes: dict) -> dict:
    """The file's tensors named in `shapes` that it has, each checked for its shape and dtype (d2t int64, t2d bool,
    weights float)."""
    with optional_imports():
        from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys() if name in shapes}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is missing or not a readable safetensors file: {err}") from err
    for name, tensor in tensors.items():
        dtypes = {"d2t": (torch.int64,), "t2d": (torch.bool,)}.get(name, FLOAT_DTYPES)
        if tuple(tensor.shape) != shapes[name] or tensor.dtype not in dtypes:
            raise ValueError(f"{path}: tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, the config needs "
                             f"{' or '.join(map(str, dtypes))} {shapes[name]}")
    return {name: t if name in ("d2t", "t2d") else t.float() for name, t in tensors.items()}


def draft_to_target(d2t, t2d, draft_vocab: int, target_vocab: int, path: str) -> torch.Tensor:
    """Target ids of the draft ids, int64 [draft_vocab]: draft id + d2t, distinct and in the target's vocabulary,
    exactly the ids t2d marks; neither tensor: the full vocabulary, as it is."""
    if d2t is None and t2d is None:
        if draft_vocab != target_vocab:
            raise ValueError(f"{path}: without d2t and t2d the draft vocabulary is the target's ({target_vocab}), "
                             f"draft_vocab_size is {draft_vocab}")
        return torch.arange(target_vocab)
    if d2t is None or t2d is None:
        raise ValueError(f"{path}: tensor {'d2t' if d2t is None else 't2d'} is missing (the other is there)")
    ids = torch.arange(draft_vocab) + d2t
    if int(ids.min()) < 0 or int(ids.max()) >= target_vocab or len(ids.unique()) != draft_vocab:
        raise ValueError(f"{path}: d2t maps draft ids to target ids in [{int(ids.min())}, {int(ids.max())}], not "
                         f"{draft_vocab} distinct ids of the target's {target_vocab}")
    if int(t2d.sum()) != draft_vocab or not bool(t2d[ids].all()):
        raise ValueError(f"{path}: t2d marks {int(t2d.sum())} target ids, not exactly the {draft_vocab} that d2t "
                         "maps to")
    return ids
