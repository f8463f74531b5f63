"""HierSpec's intermediate model for a target (docs/design.md 4.5): derived from the target's own weights as its
shipped recipe says, or loaded from another GGUF file with the same tokenizer.

A recipe is a small JSON file next to the model's EAGLE head (drafters/heads/NAME.intermediate.json):

    {"layers": [0, 1, ...],          # the target layers the intermediate runs (models.layer_subset)
     "vocabulary": "draft" | "full", # "draft": its output head computes only the EAGLE head's draft vocabulary
     "measured": {...}}              # how it was chosen (docs/notes.md, "HierSpec intermediate")
"""
import json
from typing import Optional

import torch

from .drafters.head_file import shipped_file
from .hierarchical import check_intermediate
from .models import Transformer, layer_subset, load_model


def default_recipe_path(model_path: str) -> Optional[str]:
    """The shipped recipe for a GGUF file (heads/<file name>.intermediate.json), or None when there is none."""
    return shipped_file(model_path, ".intermediate.json")


def derive_intermediate(target: Transformer, recipe_file: str, drafter) -> Transformer:
    """The intermediate a recipe file describes (module docstring); `drafter` gives the draft vocabulary."""
    try:
        with open(recipe_file, encoding="utf-8") as f:
            recipe = json.load(f)
    except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise ValueError(f"{recipe_file} is not a JSON file: {err!r}") from err
    layers = recipe.get("layers") if isinstance(recipe, dict) else None
    if not isinstance(layers, list) or not all(type(i) is int for i in layers):
        raise ValueError(f"{recipe_file}: a recipe is a JSON object whose \"layers\" is a list of layer indices")
    vocabulary = recipe.get("vocabulary", "full")
    if vocabulary not in ("draft", "full"):
        raise ValueError(f"{recipe_file}: an intermediate's vocabulary is 'draft' or 'full', got {vocabulary!r}")
    token_ids = torch.tensor(drafter.draft_ids) if vocabulary == "draft" else None
    try:
        return layer_subset(target, layers, token_ids)
    except ValueError as err:  # layers the target does not have
        raise ValueError(f"{recipe_file}: {err}") from err


def load_intermediate(path: str, target: Transformer, target_path: Optional[str] = None) -> Transformer:
    """A runner model from `path` (a GGUF file or checkpoint directory) as the target's intermediate: a
    ValueError when its vocabulary (and, given target_path, its tokenizer) differs from the target's."""
    intermediate = load_model(path)
    check_intermediate(target, intermediate)
    if target_path is not None:
        from .engines.transformers import load_tokenizer

        if load_tokenizer(path).get_vocab() != load_tokenizer(target_path).get_vocab():
            raise ValueError(f"{path} has another tokenizer than {target_path}: an intermediate must share the "
                             "target's token ids")
    return intermediate
