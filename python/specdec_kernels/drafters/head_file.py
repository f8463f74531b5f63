"""The EAGLE head's file (drafters.weights_file: safetensors, no pickle): its config, trainable weights in float16,
the draft vocabulary (draft_to_target) and free-form metadata (the command that trained it). The target's
output rows are not stored: they are rebuilt from the target at load."""
import os
from dataclasses import asdict
from typing import Optional

import torch

from specdec_kernels.models.llama import ModelConfig
from specdec_kernels.quant import dense_weight

from .eagle_head import EagleHead
from .weights_file import assign_weights, config_from, read_weights_file, save_weights_file

HEADS_DIR = os.path.join(os.path.dirname(__file__), "heads")  # heads shipped with the package
HEAD_SUFFIX = ".eagle.safetensors"
# The head's state that is not a float16 weight: lm_rows is rebuilt from the target, draft_to_target is int64.
NOT_WEIGHTS = ("lm_rows", "draft_to_target")


def shipped_file(model_path: str, suffix: str) -> Optional[str]:
    """The drafting part shipped for a model file (heads/<file name><suffix>), or None when there is none."""
    name = os.path.splitext(os.path.basename(model_path))[0]
    path = os.path.join(HEADS_DIR, name + suffix)
    return path if os.path.exists(path) else None


def default_head_path(model_path: str) -> Optional[str]:
    """The shipped head for a GGUF file (heads/<file name>.eagle.safetensors), or None when there is none."""
    return shipped_file(model_path, HEAD_SUFFIX)


def save_head(head: EagleHead, path: str, **metadata) -> None:
    weights = {k: v.half() for k, v in head.state_dict().items() if k not in NOT_WEIGHTS}
    save_weights_file(path, {**weights, "draft_to_target": head.draft_to_target}, asdict(head.config), metadata)


def load_head(path: str, target) -> EagleHead:
    """The head in `path` for `target` (a models.Transformer); ValueError when the file is damaged or the head
    was trained for another shape or vocabulary. The saved metadata is on `head.metadata`."""
    tensors, config, metadata = read_weights_file(path)
    config = config_from(ModelConfig, config, path)
    check_fits(config, target.config, path)
    ids = draft_vocabulary(tensors.pop("draft_to_target", None), config.vocab_size, target.config.vocab_size, path)
    lm_rows = dense_weight(target.lm_head, rows=ids)
    with torch.device("meta"):  # sized by the config: nothing is allocated before the file's tensors match it
        head = EagleHead(config, lm_rows, ids)
    assign_weights(head, tensors, torch.float16, path, built=NOT_WEIGHTS)
    head.metadata = metadata
    return head.eval()


def check_fits(config: ModelConfig, c: ModelConfig, path: str) -> None:
    """A head's config that the drafter can run on target config c."""
    if (config.dim, config.n_heads, config.n_kv_heads) != (c.dim, c.n_heads, c.n_kv_heads):
        raise ValueError(f"{path} is a head for dim {config.dim} / {config.n_heads} heads, the target has "
                         f"dim {c.dim} / {c.n_heads} heads")
    if config.hidden_dim < 1 or config.hidden_dim % 32:  # the drafter quantizes w_down in groups of 32 along it
        raise ValueError(f"{path}: hidden_dim {config.hidden_dim} is not a positive multiple of 32")
    if config.rope_factors is not None and len(config.rope_factors) != c.head_dim // 2:
        raise ValueError(f"{path}: {len(config.rope_factors)} RoPE factors, the head dimension needs {c.head_dim // 2}")


def draft_vocabulary(ids: Optional[torch.Tensor], size: int, target_vocab: int, path: str) -> torch.Tensor:
    """The file's draft_to_target: int64 [size], target token ids in [0, target_vocab)."""
    if ids is None or ids.dtype != torch.int64 or tuple(ids.shape) != (size,) or size < 1:
        found = "none" if ids is None else f"{ids.dtype} {tuple(ids.shape)}"
        raise ValueError(f"{path}: draft_to_target must be int64 ({size},) with vocab_size >= 1, got {found}")
    if int(ids.min()) < 0 or int(ids.max()) >= target_vocab:
        raise ValueError(f"{path} drafts token ids in [{int(ids.min())}, {int(ids.max())}], the target's vocabulary "
                         f"has {target_vocab}")
    return ids
