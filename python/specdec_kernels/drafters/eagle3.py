"""The EAGLE-3 head on the specdec ops, drafting EAGLE-2 trees for a target (drafters.base.Drafter).

EagleDrafter's machinery (static KV cache, tree_attention, tree growth, W4A16 layers) runs the layer of
drafters.eagle3_head.Eagle3Head: extend fuses the target's residual streams once, g = fc(streams), and the
layer reads [input_norm(embed(token)); hidden_norm(g)] with g as its residual; a tree node is fed its parent's
output h as its g (no fc again), and log-probs are read through the head's final norm and output layer.
"""
from typing import Optional

import torch
from torch import nn

from specdec_kernels import ops

from .eagle import DRAFT_GROUP_SIZE, DRAFT_X_DIGITS, EagleDrafter
from .eagle3_head import Eagle3Head


class Eagle3Drafter(EagleDrafter):
    """An Eagle3Head on the specdec ops; extend takes the target's residual streams entering `feature_layers`
    (Transformer.forward(..., capture=feature_layers)'s third output) instead of its final-norm feature."""

    def __init__(self, target, head: Eagle3Head, quantize: bool = True, max_seq_len: Optional[int] = None,
                 x_digits: int = DRAFT_X_DIGITS, group_size: int = DRAFT_GROUP_SIZE):
        super().__init__(target, head, quantize, max_seq_len, x_digits, group_size)
        self.feature_layers = head.feature_layers
        self.input_norm, self.hidden_norm, self.norm = (
            getattr(head, name).detach() for name in ("input_norm", "hidden_norm", "norm"))

    @staticmethod
    def _output_layer(head: Eagle3Head) -> nn.Linear:
        return head.lm_head

    def extend(self, tokens: torch.Tensor, features: torch.Tensor):
        """Commit pairs (tokens[i] = x_{j+1}, features[i] = the streams at j) for j = D, D + 1, ...: tokens
        int64 [n], features [n, 3 dim] -> (h of the last pair [dim], its draft-vocabulary log-probs [Vd])."""
        width = self.fc.in_features
        if features.dim() != 2 or features.shape[1] != width:
            raise ValueError(f"EAGLE-3 reads features [n, {width}] (the target's residual streams entering "
                             f"layers {list(self.feature_layers)}), got {list(features.shape)}")
        return super().extend(tokens, self.fc.forward(features.float()))

    def _layer_input(self, tokens: torch.Tensor, hidden: torch.Tensor):
        eps = self.config.norm_eps
        embeds = ops.rms_norm(self.target.embedding[tokens], self.input_norm, eps)
        return torch.cat([embeds, ops.rms_norm(hidden, self.hidden_norm, eps)], -1), hidden

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return super()._log_probs(ops.rms_norm(hidden, self.norm, self.config.norm_eps))
