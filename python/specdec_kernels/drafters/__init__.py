"""Draft models that propose tokens for the target to verify."""
from .eagle import EagleDrafter, EagleHead, default_head_path, select_tree
from .ngram import NgramLookup

__all__ = ["EagleDrafter", "EagleHead", "NgramLookup", "default_head_path", "select_tree"]
