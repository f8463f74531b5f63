"""Cheaper models derived from a target without new weights: the intermediates of hierarchical drafts
(docs/design.md 4.5). Both keep the target's vocabulary and token ids; a layer subset shares the target's tensors,
a vocabulary subset copies the output-head rows it keeps."""
from dataclasses import replace
from typing import Optional, Sequence

import torch
from torch import nn

from specdec_kernels.quant import QuantizedWeight, RowwiseLinear, W4A16Linear, W8A16Linear

from .llama import Transformer


class VocabularySubsetHead(nn.Module):
    """An output head computing only the rows of `token_ids` (a fraction of the GEMM that dominates a small
    model's forward); every other token's logit is -inf, so it is never chosen nor sampled."""

    def __init__(self, head: nn.Module, token_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        ids = token_ids.long()
        if ids.dim() != 1 or ids.numel() == 0 or ids.unique().numel() != ids.numel() or not (
                0 <= int(ids.min()) and int(ids.max()) < vocab_size):
            raise ValueError(f"token_ids must be distinct ids in [0, {vocab_size})")
        self.rows = head_rows(head, ids)
        self.register_buffer("token_ids", ids)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = self.rows.forward(x)
        logits = part.new_full((*part.shape[:-1], self.vocab_size), float("-inf"))
        logits[..., self.token_ids] = part
        return logits


def head_rows(head: nn.Module, ids: torch.Tensor) -> nn.Module:
    """The rows `ids` of an output head, as a layer of the same kind and numerics."""
    bias = None if head.bias is None else head.bias[ids]
    if type(head) is W8A16Linear:
        rows = W8A16Linear(head.qweight[ids], head.scales[ids], head.mins[ids], head.group_size, bias)
    elif type(head) is W4A16Linear:
        rows = W4A16Linear(QuantizedWeight(head.qweight[ids], head.scales[ids], head.mins[ids], head.group_size), bias)
    elif type(head) is RowwiseLinear:
        return RowwiseLinear(head.weight[ids], bias)
    else:
        raise TypeError(f"a vocabulary subset of a {type(head).__name__} head is not supported")
    rows.x_digits = head.x_digits
    return rows


def layer_subset(model: Transformer, layers: Sequence[int], token_ids: Optional[torch.Tensor] = None) -> Transformer:
    """A model that runs only `layers` of `model`, in order, then its final norm and output head (restricted to
    `token_ids` when given: VocabularySubsetHead): the same vocabulary and weights, its own KV cache."""
    layers = list(layers)
    if not layers or sorted(set(layers)) != layers or not 0 <= layers[0] <= layers[-1] < model.config.n_layers:
        raise ValueError(f"layers must be distinct increasing indices in [0, {model.config.n_layers}), got {layers}")
    config = replace(model.config, n_layers=len(layers), max_seq_len=model.max_seq_len)
    head = model.lm_head if token_ids is None else VocabularySubsetHead(model.lm_head, token_ids,
                                                                        model.config.vocab_size)
    return Transformer(config, model.embedding, [model.blocks[i] for i in layers], model.out_norm, head)
