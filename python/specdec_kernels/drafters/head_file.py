"""The EAGLE head's file: its config, trainable weights in float16, the draft vocabulary and free-form metadata
(the command that trained it), saved with torch.save and read back with weights_only=True (no pickle of code).
The target's output rows are not stored: they are rebuilt from the target at load."""
import os
from dataclasses import asdict
from typing import Optional

import torch

from specdec_kernels.models.llama import ModelConfig
from specdec_kernels.quant import dense_weight

from .eagle_head import EagleHead

HEADS_DIR = os.path.join(os.path.dirname(__file__), "heads")  # heads shipped with the package


def shipped_file(model_path: str, suffix: str) -> Optional[str]:
    """The drafting part shipped for a model file (heads/<file name><suffix>), or None when there is none."""
    name = os.path.splitext(os.path.basename(model_path))[0]
    path = os.path.join(HEADS_DIR, name + suffix)
    return path if os.path.exists(path) else None


def default_head_path(model_path: str) -> Optional[str]:
    """The shipped head for a GGUF file (heads/<file name>.eagle.pt), or None when there is none."""
    return shipped_file(model_path, ".eagle.pt")


def save_head(head: EagleHead, path: str, **metadata) -> None:
    weights = {k: v.half() for k, v in head.state_dict().items() if k not in ("lm_rows", "draft_to_target")}
    torch.save({"config": asdict(head.config), "weights": weights, "draft_to_target": head.draft_to_target,
                "metadata": metadata}, path)


def load_head(path: str, target) -> EagleHead:
    """The head in `path` for `target` (a models.Transformer); ValueError when it was trained for another shape
    or vocabulary. The saved metadata is on `head.metadata`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = ModelConfig(**saved["config"])
    c = target.config
    if (config.dim, config.n_heads, config.n_kv_heads) != (c.dim, c.n_heads, c.n_kv_heads):
        raise ValueError(f"{path} is a head for dim {config.dim} / {config.n_heads} heads, the target has "
                         f"dim {c.dim} / {c.n_heads} heads")
    ids = saved["draft_to_target"]
    if int(ids.max()) >= c.vocab_size:
        raise ValueError(f"{path} drafts token ids up to {int(ids.max())}, the target's vocabulary has {c.vocab_size}")
    head = EagleHead(config, dense_weight(target.lm_head)[ids], ids)
    head.load_state_dict({k: v.float() for k, v in saved["weights"].items()}, strict=False)
    head.metadata = saved.get("metadata", {})
    return head.eval()
