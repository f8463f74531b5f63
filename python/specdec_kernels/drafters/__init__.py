"""Draft models that propose tokens for the target to verify: the protocol and draft shapes (base), the EAGLE
head (eagle_head, its file: head_file), the drafter that runs it on the ops (eagle), EAGLE-2 tree growth
(tree_growth) and prompt lookup (ngram)."""
from .base import DEFAULT_CHAIN, DEFAULT_TREE, SHAPE_WITH_LOOKUP, Drafter, DraftShape
from .eagle import EagleDrafter
from .eagle_head import EagleHead
from .head_file import default_head_path, load_head, save_head
from .ngram import NgramLookup
from .tree_growth import grow_tree, select_tree

__all__ = ["DEFAULT_CHAIN", "DEFAULT_TREE", "SHAPE_WITH_LOOKUP", "DraftShape", "Drafter", "EagleDrafter", "EagleHead",
           "NgramLookup", "default_head_path", "grow_tree", "load_head", "save_head", "select_tree"]
