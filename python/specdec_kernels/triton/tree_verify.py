"""Fused tree verification in Triton (docs/design.md 4.3): one program per batch row walks its tree from the root and
reduces only the vocabulary rows of the nodes it visits, in blocks of BLOCK_V, in float32.

Sampling keeps the target distribution p of the current node unnormalised in a float32 scratch row with its
running total (as the CPU kernel does), so rejecting a deterministic draft token is O(1). top-k and top-p
thresholds are found by bisection on the float bit patterns of p >= 0 (monotone as integers), one pass over
the row per step, instead of a sort. The row is written and read by different threads: debug_barrier
orders those accesses within the program.
"""
import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.triton.checks import check_logits, check_sampling_args, check_tree

with optional_imports():
    import triton
    import triton.language as tl

_BLOCK_V = 2048


@triton.jit
def _row_argmax(row_ptr, V, BLOCK_V: tl.constexpr):
    """First index of the row's maximum (ties -> lowest index, like torch.argmax)."""
    best, best_index = float("-inf"), 0
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offsets, mask=offsets < V, other=float("-inf")).to(tl.float32)
        block_max = tl.max(x, axis=0)
        block_index = v0 + tl.argmax(x, axis=0, tie_break_left=True)
        better = block_max > best
        best_index = tl.where(better, block_index, best_index)
        best = tl.where(better, block_max, best)
    return best_index


@triton.jit
def _children(parents, nodes, node, after, BLOCK_T: tl.constexpr):
    """The first child of node with index > after, or BLOCK_T when there is none."""
    return tl.min(tl.where((parents == node) & (nodes > after), nodes, BLOCK_T), axis=0)


@triton.jit
def _load_tree(tokens_ptr, parents_ptr, b, T, BLOCK_T: tl.constexpr):
    nodes = tl.arange(0, BLOCK_T)
    parents = tl.load(parents_ptr + b * T + nodes, mask=nodes < T, other=-3)  # -3: no node's child
    tokens = tl.load(tokens_ptr + b * T + nodes, mask=nodes < T, other=-1)
    return nodes, parents, tokens


@triton.jit
def _greedy_kernel(logits_ptr, tokens_ptr, parents_ptr, idx_ptr, len_ptr, bonus_ptr, T, V,
                   BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0)
    nodes, parents, tokens = _load_tree(tokens_ptr, parents_ptr, b, T, BLOCK_T)
    node, accepted, target, walking = 0, 0, 0, True
    while walking:
        tl.store(idx_ptr + b * T + accepted, node)
        accepted += 1
        target = _row_argmax(logits_ptr + (b * T + node).to(tl.int64) * V, V, BLOCK_V)
        # the first child (index order) whose token is the target; duplicates of a token can never win later
        child = tl.min(tl.where((parents == node) & (tokens == target), nodes, BLOCK_T), axis=0)
        walking = child < BLOCK_T
        node = tl.where(walking, child, node)
    tl.store(len_ptr + b, accepted)
    tl.store(bonus_ptr + b, target)


# ---------------------------------------------------------------- sampling
@triton.jit
def _sum_where(p_ptr, V, threshold, STRICT: tl.constexpr, COUNT: tl.constexpr, BLOCK_V: tl.constexpr):
    """Mass (float64) or count of the entries > threshold (STRICT) or >= threshold."""
    acc = tl.zeros((BLOCK_V,), dtype=tl.float64)
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        p = tl.load(p_ptr + offsets, mask=offsets < V, other=-1.0)
        if STRICT:
            selected = p > threshold
        else:
            selected = p >= threshold
        if COUNT:
            acc += tl.where(selected, 1.0, 0.0)
        else:
            acc += tl.where(selected, p.to(tl.float64), 0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _kth_largest(p_ptr, V, k, max_bits, BLOCK_V: tl.constexpr):
    """The k-th largest entry: the largest t with #(p >= t) >= k, by bisection on float bits."""
    low, high = 0, max_bits + 1  # #(p >= 0) = V >= k; #(p >= above the max) = 0 < k
    while high - low > 1:
        middle = (low + high) // 2
        enough = _sum_where(p_ptr, V, middle.to(tl.float32, bitcast=True), False, True, BLOCK_V) >= k
        low = tl.where(enough, middle, low)
        high = tl.where(enough, high, middle)
    return low.to(tl.float32, bitcast=True)


@triton.jit
def _top_p_cutoff(p_ptr, V, budget, max_bits, BLOCK_V: tl.constexpr):
    """The smallest value kept by top-p: the smallest t with mass(p > t) < budget (ties at the cut are kept)."""
    low, high = -1, max_bits  # mass(p > max) = 0 < budget
    while high - low > 1:
        middle = (low + high) // 2
        below = _sum_where(p_ptr, V, middle.to(tl.float32, bitcast=True), True, False, BLOCK_V) < budget
        high = tl.where(below, middle, high)
        low = tl.where(below, low, middle)
    return high.to(tl.float32, bitcast=True)


@triton.jit
def _zero_below(p_ptr, V, threshold, BLOCK_V: tl.constexpr):
    """p[p < threshold] = 0; returns the new total."""
    total = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        p = tl.load(p_ptr + offsets, mask=offsets < V, other=0.0)
        p = tl.where(p < threshold, 0.0, p)
        tl.store(p_ptr + offsets, p, mask=offsets < V)
        total += p
    tl.debug_barrier()
    return tl.sum(total, axis=0)


@triton.jit
def _target_probs(logits_ptr, p_ptr, V, temperature, top_k, top_p, BLOCK_V: tl.constexpr):
    """p = exp(logits / temperature - max), then top-k, then top-p, unnormalised; returns its total."""
    row_max = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(logits_ptr + offsets, mask=offsets < V, other=float("-inf")).to(tl.float32) / temperature
        row_max = tl.maximum(row_max, x)
    top = tl.max(row_max, axis=0)
    total = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(logits_ptr + offsets, mask=offsets < V, other=float("-inf")).to(tl.float32) / temperature
        p = tl.exp(x - top)
        tl.store(p_ptr + offsets, p, mask=offsets < V)
        total += tl.where(offsets < V, p, 0.0)
    tl.debug_barrier()
    total = tl.sum(total, axis=0)
    max_bits = tl.full((), 0x3F800000, dtype=tl.int32)  # p <= exp(0) = 1
    if (top_k > 0) & (top_k < V):
        total = _zero_below(p_ptr, V, _kth_largest(p_ptr, V, top_k, max_bits, BLOCK_V), BLOCK_V)
    if top_p < 1.0:
        budget = total.to(tl.float64) * top_p
        total = _zero_below(p_ptr, V, _top_p_cutoff(p_ptr, V, budget, max_bits, BLOCK_V), BLOCK_V)
    return total


@triton.jit
def _residual(p_ptr, q_ptr, V, total, BLOCK_V: tl.constexpr):
    """p <- max(p / total - q, 0) after a rejected sampled draft token; returns the new total."""
    new_total = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        p = tl.load(p_ptr + offsets, mask=offsets < V, other=0.0)
        q = tl.load(q_ptr + offsets, mask=offsets < V, other=0.0).to(tl.float32)
        p = tl.maximum(p / total - q, 0.0)
        tl.store(p_ptr + offsets, p, mask=offsets < V)
        new_total += p
    tl.debug_barrier()
    return tl.sum(new_total, axis=0)


@triton.jit
def _sample_from(p_ptr, V, total, u, BLOCK_V: tl.constexpr):
    """Inverse CDF in float64: the first token whose cumulative mass exceeds u * total, never a zero-mass one
    (u * total at or past the end: the last nonzero token)."""
    target = u.to(tl.float64) * total.to(tl.float64)
    carry = tl.full((), 0.0, dtype=tl.float64)
    found, last_nonzero = V, 0
    for v0 in range(0, V, BLOCK_V):
        offsets = v0 + tl.arange(0, BLOCK_V)
        p = tl.load(p_ptr + offsets, mask=offsets < V, other=0.0)
        cdf = carry + tl.cumsum(p.to(tl.float64), axis=0)
        crossing = tl.min(tl.where((cdf > target) & (p > 0), offsets, V), axis=0)
        found = tl.minimum(found, crossing)
        last_nonzero = tl.maximum(last_nonzero, tl.max(tl.where(p > 0, offsets, 0), axis=0))
        carry = tl.max(cdf, axis=0)
    return tl.where(found < V, found, last_nonzero)


@triton.jit
def _sample_kernel(logits_ptr, draft_ptr, uniforms_ptr, tokens_ptr, parents_ptr, p_scratch, idx_ptr, len_ptr,
                   bonus_ptr, T, V, temperature, top_p, top_k,
                   SAMPLED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0)
    nodes, parents, tokens = _load_tree(tokens_ptr, parents_ptr, b, T, BLOCK_T)
    p_ptr = p_scratch + b.to(tl.int64) * V
    node, accepted, walking, total = 0, 0, True, 0.0
    while walking:
        tl.store(idx_ptr + b * T + accepted, node)
        accepted += 1
        row = (b * T + node).to(tl.int64) * V
        total = _target_probs(logits_ptr + row, p_ptr, V, temperature, top_k, top_p, BLOCK_V)
        winner = -1
        child = _children(parents, nodes, node, node, BLOCK_T)
        while (child < BLOCK_T) & (winner < 0):  # children in index order, each with its own uniform
            x = tl.load(tokens_ptr + b * T + child)
            u = tl.load(uniforms_ptr + b * (T + 1) + child)
            px = tl.load(p_ptr + x)
            if SAMPLED:  # accept with min(1, p / q), else p <- max(p - q, 0)
                qx = tl.load(draft_ptr + row + x).to(tl.float32)
                accept = (px > 0) & (u * qx * total < px)
                if accept == 0:
                    total = _residual(p_ptr, draft_ptr + row, V, total, BLOCK_V)
            else:  # deterministic draft: accept with p(x), else p(x) <- 0
                accept = u * total < px
                if accept == 0:
                    tl.store(p_ptr + x, 0.0)
                    tl.debug_barrier()
                    total = total - px
            winner = tl.where(accept, child, winner)
            child = _children(parents, nodes, node, child, BLOCK_T)
        walking = winner >= 0
        node = tl.where(walking, winner, node)
    tl.store(len_ptr + b, accepted)
    u = tl.load(uniforms_ptr + b * (T + 1) + T)
    tl.store(bonus_ptr + b, _sample_from(p_ptr, V, total, u, BLOCK_V))


# ---------------------------------------------------------------- entry points
def _verdict(tokens):
    """(accept_idx [B, T] of -1, accept_len [B], bonus [B]), int64."""
    batch, t = tokens.shape
    return (torch.full((batch, t), -1, dtype=torch.int64, device=tokens.device),
            torch.zeros(batch, dtype=torch.int64, device=tokens.device),
            torch.zeros(batch, dtype=torch.int64, device=tokens.device))


def tree_verify_greedy(tokens, parents, logits):
    """tokens int64 [B, T], parents [B, T] (docs/design.md 3.2), logits [B, T, V] -> (accept_idx int64 [B, T] padded
    with -1, accept_len int64 [B] counting the root, bonus int64 [B])."""
    check_tree(tokens, parents)
    check_logits(logits, tokens)
    batch, t = tokens.shape
    accept_idx, accept_len, bonus = _verdict(tokens)
    _greedy_kernel[(batch,)](logits.contiguous(), tokens.contiguous(), parents.long().contiguous(), accept_idx,
                             accept_len, bonus, t, logits.shape[2], BLOCK_T=triton.next_power_of_2(t),
                             BLOCK_V=min(_BLOCK_V, triton.next_power_of_2(logits.shape[2])), num_warps=8)
    return accept_idx, accept_len, bonus


def tree_verify_sample(tokens, parents, logits, uniforms, temperature: float, top_p: float = 1.0, top_k: int = 0,
                       draft_probs=None):
    """Lossless recursive rejection sampling (reference.tree_verify_sample): uniforms float32 [B, T + 1]
    (uniforms[b, i] decides node i, uniforms[b, T] samples the bonus); draft_probs [B, T, V] or None for
    deterministic (top-k) drafts. Returns what tree_verify_greedy returns."""
    check_tree(tokens, parents)
    check_logits(logits, tokens)
    check_sampling_args(tokens, logits, uniforms, temperature, top_p, top_k, draft_probs)
    batch, t = tokens.shape
    vocab = logits.shape[2]
    accept_idx, accept_len, bonus = _verdict(tokens)
    p_scratch = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
    draft = draft_probs.contiguous() if draft_probs is not None else logits  # unread when SAMPLED is False
    _sample_kernel[(batch,)](logits.contiguous(), draft, uniforms.contiguous(), tokens.contiguous(),
                             parents.long().contiguous(), p_scratch, accept_idx, accept_len, bonus, t, vocab,
                             float(temperature), float(top_p), int(top_k), SAMPLED=draft_probs is not None,
                             BLOCK_T=triton.next_power_of_2(t), BLOCK_V=min(_BLOCK_V, triton.next_power_of_2(vocab)),
                             num_warps=8)
    return accept_idx, accept_len, bonus
