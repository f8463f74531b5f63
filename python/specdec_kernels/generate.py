"""Plain autoregressive decoding on the runner (the baseline every speculative method is measured against)."""
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import torch

from .models import Transformer
from .reference import sample_from, target_probs


@dataclass
class GenerationResult:
    tokens: List[int]                      # the new tokens (stop token included when one ended the run)
    steps: int = 0                         # target forwards after the prefill
    seconds: float = 0.0
    accepted_per_step: List[int] = field(default_factory=list)


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
    import time

    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt) + max_new_tokens > model.max_seq_len:
        raise ValueError(f"context overflow: {len(prompt)} prompt + {max_new_tokens} new tokens > "
                         f"{model.max_seq_len} (the model's cache)")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stops = set(stop_tokens)
    model.setup_cache(1, model.max_seq_len) if model.cache_lens.shape[0] != 1 else model.reset()
    result = GenerationResult(tokens=[])
    start = time.perf_counter()
    logits, _ = model(torch.tensor([prompt]), logits_to_keep=1)  # only the last token's logits are used
    model.commit(len(prompt))
    for _ in range(max_new_tokens):
        token = choose_token(logits[0, -1], temperature, top_p, top_k, generator)
        result.tokens.append(token)
        if stream is not None:
            stream(token)
        if token in stops or len(result.tokens) == max_new_tokens:
            break
        logits, _ = model(torch.tensor([[token]]))
        model.commit(1)
        result.steps += 1
        result.accepted_per_step.append(1)
    result.seconds = time.perf_counter() - start
    return result
