"""Decoding on the runner: plain autoregressive decoding (the baseline every speculative method is measured
against) and speculative decoding with a drafter's trees, verified losslessly by the tree ops.

An output ends at a stop token, at max_new_tokens, or when the model's cache is full (GenerationResult.stop_reason);
up to there greedy speculative decoding gives plain decoding's tokens. A prompt that alone does not fit the cache
is a ContextOverflow (a ValueError).

The target is a models.Transformer, or anything with its forward, commit, commit_path, cache_lens, max_seq_len
and config (engines.hf_speculative.HFTarget: a transformers model).
"""
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import torch

from . import ops
from .drafters import DEFAULT_TREE, Drafter, DraftShape, LengthPredictor, NgramLookup
from .drafters.ldlp import OnePositionPredictor
from .models import Transformer
from .reference import sample_from, target_probs
from .tree import MAX_TREE_NODES, DraftTree

# The smallest sampling temperature: logits / temperature must stay finite in float32 (here for logits up to
# ~3e8); below it softmax would give NaN. 0 is greedy.
MIN_TEMPERATURE = 1e-30

# Why an output ended: a stop token was produced, it holds max_new_tokens, or the model's cache is full (the last
# token has no slot, so no forward can give the next one).
STOP_REASONS = ("stop_token", "max_new_tokens", "context_full")


class ContextOverflow(ValueError):
    """The prompt alone does not fit the model's cache."""


@dataclass
class GenerationResult:
    tokens: List[int]                      # the new tokens (stop token included when one ended the run)
    stop_reason: str = ""                  # one of STOP_REASONS
    steps: int = 0                         # target forwards after the prefill
    seconds: float = 0.0
    accepted_per_step: List[int] = field(default_factory=list)  # tokens emitted per target forward (bonus included)
    draft_sizes: List[int] = field(default_factory=list)        # tree nodes verified per step (root included)
    draft_lengths: List[int] = field(default_factory=list)      # draft depth per step (length predictor, HierSpec)
    intermediate_forwards: List[int] = field(default_factory=list)  # HierSpec: the intermediate's forwards per step
    draft_seconds: float = 0.0
    intermediate_seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted_per_step) / max(len(self.accepted_per_step), 1)


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    """A ValueError naming the first setting out of range (the tree ops would reject it only after the first
    token, and plain decoding not at all)."""
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise ValueError(f"temperature must be 0 (greedy) or finite and >= {MIN_TEMPERATURE}, got {temperature}")
    if not 0 < top_p <= 1:  # top_p 0 would keep no token: top_k = 1 keeps the most likely one
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")


def choose_token(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                 generator: Optional[torch.Generator]) -> int:
    """Greedy (argmax, lowest index on ties) at temperature 0, else a sample from the filtered target."""
    if temperature == 0:  # max over the last dim returns the first maximal index, like argmax, in 1/3 the time
        return int(logits.max(-1).indices)
    probs = target_probs(logits, temperature, top_p, top_k)
    return sample_from(probs, float(torch.rand((), generator=generator)))


@torch.inference_mode()
def generate(model: Transformer, prompt_ids: Iterable[int], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: Optional[int] = None, stop_tokens: Iterable[int] = (),
             stream: Optional[Callable[[int], None]] = None) -> GenerationResult:
    """Decode one token per forward. `stream(token)` is called as each token is produced."""
    prompt = _check_inputs(model, prompt_ids, max_new_tokens, temperature, top_p, top_k)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = _Output(max_new_tokens, stop_tokens, stream)
    logits = _prefill(model, prompt)[0]
    while not out.emit(choose_token(logits[0, -1], temperature, top_p, top_k, generator)):
        if free_slots(model) == 0:  # no slot for the last token: no forward can give the next one
            return out.finish("context_full")
        logits, _ = model(torch.tensor([[out.result.tokens[-1]]]))
        model.commit(1)
        out.result.steps += 1
        out.result.accepted_per_step.append(1)
    return out.result


class _Output:
    """The emitted tokens so far: streams them and says when decoding ends (a stop token, max_new_tokens); the
    decoding loops end it themselves when the cache is full."""

    def __init__(self, max_new_tokens: int, stop_tokens: Iterable[int], stream: Optional[Callable[[int], None]]):
        self.result = GenerationResult(tokens=[])
        self.max_new_tokens, self.stops, self.stream = max_new_tokens, set(stop_tokens), stream
        self.start = time.perf_counter()

    def emit(self, token: int) -> bool:
        """Append token; True when it ends the output."""
        self.result.tokens.append(token)
        if self.stream is not None:
            self.stream(token)
        if token in self.stops:
            self.finish("stop_token")
        elif len(self.result.tokens) == self.max_new_tokens:
            self.finish("max_new_tokens")
        return bool(self.result.stop_reason)

    def finish(self, reason: str) -> GenerationResult:
        self.result.stop_reason, self.result.seconds = reason, time.perf_counter() - self.start
        return self.result


def _check_inputs(model: Transformer, prompt_ids: Iterable[int], max_new_tokens: int, temperature: float,
                  top_p: float, top_k: int) -> List[int]:
    """-> the prompt as a list, or a ValueError naming the first input out of range."""
    check_sampling(temperature, top_p, top_k)
    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 1:  # the output ends when it holds max_new_tokens: 0 would never end it
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if len(prompt) > model.max_seq_len:  # a longer output stops at the cache's end instead (context_full)
        raise ContextOverflow(f"the prompt's {len(prompt)} tokens do not fit the model's cache of "
                              f"{model.max_seq_len}")
    vocab = model.config.vocab_size
    if not 0 <= min(prompt) <= max(prompt) < vocab:  # a negative id would silently index from the end
        raise ValueError(f"prompt token ids must be in [0, {vocab}), got {min(prompt)}..{max(prompt)}")
    return prompt


def free_slots(model: Transformer) -> int:
    """Cache slots left after the committed tokens (a single-sequence cache)."""
    return model.max_seq_len - int(model.cache_lens[0])


def drafter_layers(drafter) -> tuple:
    """The target layers whose entering residual streams the drafter reads (EAGLE-3: drafters.eagle3), or () when
    it reads the target's final-norm feature."""
    return getattr(drafter, "feature_layers", ())


def forward_for(model: Transformer, drafter, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                tree_mask: Optional[torch.Tensor] = None, logits_to_keep: int = 0):
    """The model's forward -> (logits, final-norm hidden, the features `drafter` reads at each position)."""
    layers = drafter_layers(drafter)
    if layers:
        return model(tokens, positions, tree_mask, logits_to_keep, capture=layers)
    logits, hidden = model(tokens, positions, tree_mask, logits_to_keep)
    return logits, hidden, hidden


def _prefill(model: Transformer, prompt: List[int], drafter=None):
    """A fresh single-sequence cache holding the prompt -> (logits, hidden, drafter features) of its tokens."""
    model.setup_cache(1, model.max_seq_len) if model.cache_lens.shape[0] != 1 else model.reset()
    # callers use only the last logits (hidden and features stay full)
    out = forward_for(model, drafter, torch.tensor([prompt]), logits_to_keep=1)
    model.commit(len(prompt))
    return out


def step_shape(target: Transformer, shape: DraftShape, room: int, predictor: Optional[OnePositionPredictor],
               last_token: int, last_feature: torch.Tensor, root_log_probs: torch.Tensor) -> DraftShape:
    """This step's draft shape: `shape`, its depth limited to the length the predictor chooses (if given;
    AdaEAGLE: 0 is the root alone, a plain step), cut to `room` nodes. The predictor decides from the last
    accepted token x_j, its final-norm feature f_j (the pair train/ldlp.py labels; the root is x_{j+1}) and
    the drafter's top-1 probability for the root's first child."""
    if predictor is not None:
        length = predictor(target.embedding[last_token], last_feature, float(root_log_probs.max().exp()))
        shape = DraftShape(shape.total_tokens if length else 1, min(shape.depth, length), shape.top_k)
    return shape.within(room)


@torch.inference_mode()
def speculative_generate(target: Transformer, drafter: Drafter, prompt_ids: Iterable[int], max_new_tokens: int,
                         temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: Optional[int] = None,
                         stop_tokens: Iterable[int] = (), stream: Optional[Callable[[int], None]] = None,
                         shape: DraftShape = DEFAULT_TREE, lookup: Optional[NgramLookup] = None,
                         predictor: Optional[LengthPredictor] = None, planner=None) -> GenerationResult:
    """Each step the drafter grows a tree of `shape` (DraftShape.chain(k) for a chain), its depth limited by
    `predictor` (if given: AdaEAGLE's draft length, step_shape), `lookup` (if given; it is reset) grafts its
    prompt-lookup chain into it, the target verifies the tree in one forward, the tree ops accept a path
    (greedy: the argmax path; sampling: lossless rejection sampling) and keep its KV. A `planner`
    (planner.Planner, method auto; it is reset) instead decides each tree's depth and size, and may pause the
    drafter for plain steps. The output is that of `generate`: the same tokens when greedy, the same distribution
    when sampling."""
    prompt = _check_inputs(target, prompt_ids, max_new_tokens, temperature, top_p, top_k)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = _Output(max_new_tokens, stop_tokens, stream)
    result = out.result
    logits, hidden, features = _prefill(target, prompt, drafter)
    new_tokens = [choose_token(logits[0, -1], temperature, top_p, top_k, generator)]
    drafter.reset()
    if lookup is not None:
        lookup.reset()
        lookup.extend(prompt)
    # The drafter's next pairs (x_{j+1}, f_j): first the whole prompt's, then each step's accepted path (held
    # while a planner has paused the drafter).
    unfed_tokens, unfed_features = prompt[1:], [features[0]]
    last_token, last_hidden = prompt[-1], hidden[0, -1]  # at the last feature's position: the predictor's x_j, f_j
    if planner is not None:
        planner.reset()
    one_position = OnePositionPredictor(predictor) if predictor is not None else None
    while True:
        if any(out.emit(t) for t in new_tokens):  # stops at the first token that ends the output
            return result
        room = min(free_slots(target), MAX_TREE_NODES)  # the root's slot and its drafts'
        if room == 0:
            return out.finish("context_full")
        tick = time.perf_counter()
        unfed_tokens += new_tokens
        drafting = planner is None or planner.drafting()
        if drafting:
            root_hidden, root_log_probs = drafter.extend(torch.tensor(unfed_tokens), torch.cat(unfed_features))
            unfed_tokens, unfed_features = [], []
            step = (planner.shape.within(room) if planner is not None else
                    step_shape(target, shape, room, one_position, last_token, last_hidden, root_log_probs))
            draft = drafter.grow_tree(new_tokens[-1], root_hidden, root_log_probs, step, planner)
        else:  # the root alone: a plain step
            draft = DraftTree(torch.tensor([new_tokens[-1:]]), torch.tensor([[-1]]), values=[0.0])
        drafted_nodes = draft.tokens.shape[1]  # before a grafted lookup chain
        if lookup is not None:
            lookup.extend(new_tokens)
            draft = lookup.graft(draft, room)
        tock = time.perf_counter()
        logits, hidden, features = forward_for(target, drafter, draft.tokens, draft.positions(target.cache_lens),
                                               draft.mask())
        if temperature == 0:
            accept_idx, accept_len, bonus = ops.tree_verify_greedy(draft.tokens, draft.parents, logits)
        else:
            accept_idx, accept_len, bonus = ops.tree_verify_sample(draft.tokens, draft.parents, logits, temperature,
                                                                   top_p, top_k, generator=generator)
        target.commit_path(accept_idx, accept_len)
        path = accept_idx[0, : int(accept_len[0])]
        new_tokens = draft.tokens[0, path[1:]].tolist() + [int(bonus[0])]
        unfed_features.append(features[0, path])
        last_token, last_hidden = int(draft.tokens[0, path[-1]]), hidden[0, path[-1]]
        result.steps += 1
        result.accepted_per_step.append(len(new_tokens))
        result.draft_sizes.append(draft.tokens.shape[1])
        if planner is not None:
            on_path = set(path.tolist())
            planner.observe(draft.values[1:drafted_nodes], draft.parents[0, :drafted_nodes].tolist(),
                            [node in on_path for node in range(1, drafted_nodes)], len(new_tokens),
                            draft.tokens.shape[1], drafting)
            result.draft_lengths.append(int(draft.depths()[0, :drafted_nodes].max()))
        elif predictor is not None:
            result.draft_lengths.append(step.depth)
        result.draft_seconds += tock - tick
        result.verify_seconds += time.perf_counter() - tock
