"""HierSpec hierarchical drafts (docs/design.md 4.5): the EAGLE head drafts trees for an intermediate model, the
intermediate verifies them, and the paths it accepts form a sequence draft that the target verifies as a chain.

One target step, with the root r = the last token produced (not yet in any cache):

    sequence = []
    repeat until len(sequence) >= min_draft (or the caches are full):
        the head grows a tree below r; the intermediate verifies it in one forward (tree ops)
        sequence += its accepted path + its bonus token;  r = that bonus
    the target verifies [root, *sequence] as a chain; every cache keeps what the target accepted

Losslessness: greedy, the target's verification keeps only tokens equal to its own argmax. Sampling, the
intermediate's recursive rejection sampling emits each token distributed exactly as the intermediate's
(filtered) distribution at its parent, so those distributions are the proposals q of the target's chain
verification (accept with min(1, p/q), else resample from norm(max(p - q, 0))): the output follows the target.

Caches: the target and the intermediate hold the same committed tokens at the start of every step; the head's
pairs are rolled back to the step's start and rebuilt from the target's own features of what it accepted.
"""
import time
from typing import Callable, Iterable, Optional

import torch

from . import ops
from .decoding import (
    GenerationResult,
    _check_inputs,
    _Output,
    _prefill,
    choose_token,
    drafter_layers,
    free_slots,
)
from .drafters import DEFAULT_TREE, Drafter, DraftShape
from .models import Transformer
from .reference import target_probs
from .tree import MAX_TREE_NODES, DraftTree

MIN_DRAFT = 6  # the paper's sequence draft: at least 6 tokens (at most 9 + 1 with its trees)


def check_intermediate(target: Transformer, intermediate: Transformer) -> None:
    """An intermediate must share the target's vocabulary: its token ids are the target's."""
    if intermediate is target:
        raise ValueError("the intermediate must be another model than the target (it keeps its own cache): derive "
                         "one, for example models.layer_subset(target, layers)")
    if intermediate.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the intermediate's vocabulary has {intermediate.config.vocab_size} tokens, the target's "
                         f"{target.config.vocab_size}: they must share one tokenizer")


def check_min_draft(min_draft: int, shape: DraftShape) -> None:
    # the target verifies the root and up to min_draft - 1 + depth + 1 sequence tokens in one tree forward
    longest = MAX_TREE_NODES - 1 - shape.depth
    if not 1 <= min_draft <= longest:
        raise ValueError(f"min_draft must be in [1, {longest}] with trees of depth {shape.depth} (the target verifies "
                         f"at most {MAX_TREE_NODES} tokens at once), got {min_draft}")


@torch.inference_mode()
def hierarchical_generate(target: Transformer, intermediate: Transformer, drafter: Drafter, prompt_ids: Iterable[int],
                          max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                          seed: Optional[int] = None, stop_tokens: Iterable[int] = (),
                          stream: Optional[Callable[[int], None]] = None, shape: DraftShape = DEFAULT_TREE,
                          min_draft: int = MIN_DRAFT) -> GenerationResult:
    """HierSpec decoding (module docstring): the tokens of `decoding.generate` when greedy, its distribution when
    sampling. Per step, result.draft_lengths holds the sequence draft's length and result.intermediate_forwards
    the intermediate's forwards."""
    check_intermediate(target, intermediate)
    check_min_draft(min_draft, shape)
    if drafter_layers(drafter):  # its pairs come from the intermediate's features too, and layers differ
        raise ValueError("hierarchical drafts take an EAGLE-1/2 head (final-norm features), not an EAGLE-3 one")
    prompt = _check_inputs(target, prompt_ids, max_new_tokens, temperature, top_p, top_k)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = _Output(max_new_tokens, stop_tokens, stream)
    result = out.result
    logits, hidden, _ = _prefill(target, prompt)
    if intermediate.max_seq_len < target.max_seq_len:  # it must hold whatever the target holds, and its trees
        intermediate.setup_cache(1, target.max_seq_len)
    _prefill(intermediate, prompt)
    new_tokens = [choose_token(logits[0, -1], temperature, top_p, top_k, generator)]
    drafter.reset()
    pending, features = prompt[1:], hidden[0]  # the drafter's next pairs (x_{j+1}, f_j), as in speculative_generate
    lag = None  # a token the target holds and the intermediate not yet: fed with the next tree (saves a forward)
    sampling = temperature > 0
    while True:
        if any(out.emit(t) for t in new_tokens):
            return result
        if free_slots(target) == 0:  # no slot for the root
            return out.finish("context_full")
        tick = time.perf_counter()
        root_hidden, root_log_probs = drafter.extend(torch.tensor(pending + new_tokens), features)
        pending, mark, committed = [], drafter.length, int(target.cache_lens[0])
        root = new_tokens[-1]
        # The sequence draft: at most what the output can still use, and what the target's cache and one
        # verification hold (the root + the sequence).
        wanted = min(min_draft, max_new_tokens - len(result.tokens))
        capacity = min(target.max_seq_len - committed, MAX_TREE_NODES) - 1
        sequence, proposals, forwards = [], [], 0
        draft_seconds = intermediate_seconds = 0.0
        while len(sequence) < wanted and len(sequence) < capacity:
            # this round adds its path and a bonus; the intermediate holds root + sequence[:-1] (less the lag)
            room = capacity - len(sequence)
            tree = drafter.grow_tree(sequence[-1] if sequence else root, root_hidden, root_log_probs,
                                     DraftShape(shape.total_tokens, min(shape.depth, room - 1), shape.top_k).within(room))
            tock = time.perf_counter()
            draft_seconds += tock - tick
            fed = tree if lag is None else _after(lag, tree)
            skip = fed.tokens.shape[1] - tree.tokens.shape[1]
            fed_logits, fed_hidden = intermediate(fed.tokens, fed.positions(intermediate.cache_lens), fed.mask())
            tree_logits, tree_hidden = fed_logits[:, skip:], fed_hidden[:, skip:]
            accept_idx, accept_len, bonus = ops.tree_verify_sample(tree.tokens, tree.parents, tree_logits,
                                                                   temperature, top_p, top_k, generator=generator)
            kept_idx = accept_idx if not skip else torch.cat([accept_idx.new_zeros(1, 1), accept_idx + 1], 1)
            intermediate.commit_path(kept_idx, accept_len + skip)
            lag = None
            nodes = accept_idx[0, : int(accept_len[0])]
            accepted = tree.tokens[0, nodes[1:]].tolist() + [int(bonus[0])]
            if sampling:  # each emitted token followed the intermediate's distribution at its parent node
                proposals += [target_probs(row, temperature, top_p, top_k) for row in tree_logits[0, nodes]]
            sequence += accepted
            forwards += 1
            tick = time.perf_counter()
            intermediate_seconds += tick - tock
            root_hidden, root_log_probs = drafter.extend(torch.tensor(accepted), tree_hidden[0, nodes])
        tock = time.perf_counter()
        draft_seconds += tock - tick
        chain = DraftTree.chain(torch.tensor([[root] + sequence]))
        # with its mask, as every verification: attention then takes the kernel decoding takes (batch-invariant)
        logits, hidden = target(chain.tokens, chain.positions(target.cache_lens), chain.mask())
        draft_probs = None
        if sampling:
            last = torch.zeros(target.config.vocab_size)  # the last token has no child: its row is unused
            draft_probs = torch.stack(proposals + [last])[None]
        accept_idx, accept_len, bonus = ops.tree_verify_sample(chain.tokens, chain.parents, logits, temperature, top_p,
                                                               top_k, draft_probs=draft_probs, generator=generator)
        target.commit_path(accept_idx, accept_len)
        kept = int(accept_len[0]) - 1  # sequence tokens the target accepted
        tick = time.perf_counter()
        if lag is not None:  # no round ran (the cache is nearly full): feed it now
            intermediate(torch.tensor([[lag]]))
            intermediate.commit(1)
            forwards += 1
        lag = _cut_intermediate(intermediate, committed + 1 + kept, ([root] + sequence)[kept])
        intermediate_seconds += time.perf_counter() - tick
        drafter.truncate(mark)  # the head's pairs are rebuilt from the target's features next step
        new_tokens = sequence[:kept] + [int(bonus[0])]
        features = hidden[0, : kept + 1]
        result.steps += 1
        result.accepted_per_step.append(len(new_tokens))
        result.draft_sizes.append(chain.tokens.shape[1])
        result.draft_lengths.append(len(sequence))
        result.intermediate_forwards.append(forwards)
        result.draft_seconds += draft_seconds
        result.intermediate_seconds += intermediate_seconds
        result.verify_seconds += tick - tock


def _after(token: int, tree: DraftTree) -> DraftTree:
    """`tree` below one more node, `token` (the new root): the lagging token goes into the same forward."""
    parents = torch.where(tree.parents >= 0, tree.parents + 1, 0)
    return DraftTree(torch.cat([tree.tokens.new_tensor([[token]]), tree.tokens], 1),
                     torch.cat([parents.new_tensor([[-1]]), parents], 1))


def _cut_intermediate(intermediate: Transformer, length: int, last_kept: int) -> Optional[int]:
    """Cut the intermediate's cache to `length` tokens, what the target now holds. It holds root + sequence[:-1]:
    when the target kept the whole sequence it is one short, and the missing token (returned) lags."""
    if int(intermediate.cache_lens[0]) >= length:
        intermediate.cache_lens.fill_(length)
        return None
    return last_kept
