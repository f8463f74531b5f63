"""Draft models that propose tokens for the target to verify: the protocol and draft shapes (base), the EAGLE
head (eagle_head, its file: head_file), the drafter that runs it on the ops (eagle), the EAGLE-3 head
(eagle3_head, its folder in the public EAGLE-3 layout: eagle3_file) and its drafter (eagle3), EAGLE-2 tree
growth (tree_growth), prompt lookup (ngram) and RootOnly (prompt lookup alone)."""
from .base import DEFAULT_CHAIN, DEFAULT_TREE, Drafter, DraftShape, RootOnly
from .eagle import EagleDrafter
from .eagle3 import Eagle3Drafter
from .eagle3_file import is_eagle3_folder, load_eagle3, save_eagle3
from .eagle3_head import Eagle3Head
from .eagle_head import EagleHead
from .head_file import default_head_path, load_head, save_head
from .ldlp import LengthPredictor, PredictorConfig, default_predictor_path, load_predictor, save_predictor
from .ngram import NgramLookup
from .tree_growth import grow_tree, select_tree

__all__ = ["DEFAULT_CHAIN", "DEFAULT_TREE", "DraftShape", "Drafter", "Eagle3Drafter", "Eagle3Head",
           "EagleDrafter", "EagleHead", "LengthPredictor", "NgramLookup", "PredictorConfig", "RootOnly",
           "default_head_path", "default_predictor_path", "grow_tree", "is_eagle3_folder", "load_eagle3",
           "load_head", "load_predictor", "save_eagle3", "save_head", "save_predictor", "select_tree"]
