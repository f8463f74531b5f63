"""Pure-PyTorch oracles for every op: readable, slow, exact. Backends are tested against these."""
import torch


# ---------------------------------------------------------------- W4A16 (docs/design.md 3.1)
def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int [N, K]: byte j holds k = 2j in the low nibble, k = 2j + 1 in the high."""
    low = qweight & 0x0F
    high = qweight >> 4
    return torch.stack([low, high], dim=-1).reshape(qweight.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int [N, K] in 0..15 -> uint8 [N, K/2] (inverse of unpack_int4)."""
    q = q.to(torch.uint8).reshape(q.shape[0], -1, 2)
    return q[..., 0] | (q[..., 1] << 4)


def _affine(q: torch.Tensor, scales, mins, group_size: int) -> torch.Tensor:
    """W[n, k] = scales[n, k // G] * q[n, k] + mins[n, k // G], in float32."""
    s = scales.float().repeat_interleave(group_size, dim=1)
    m = mins.float().repeat_interleave(group_size, dim=1)
    return q.float() * s + m


def dequantize_w4(qweight, scales, mins, group_size: int) -> torch.Tensor:
    """4-bit qweight uint8 [N, K/2] -> float32 W [N, K]."""
    return _affine(unpack_int4(qweight), scales, mins, group_size)


def dequantize_w8(qweight, scales, mins, group_size: int) -> torch.Tensor:
    """8-bit qweight uint8 [N, K] (q 0..255) -> float32 W [N, K]."""
    return _affine(qweight, scales, mins, group_size)


def round_x_digits(x: torch.Tensor, group_size: int, digits: int) -> torch.Tensor:
    """x [M, K] as the CPU integer paths read it, in float64: per row and group, with E the binary exponent of
    the largest |x| (at least -99), x ~= sum_d digit_d 2^(E - 6 - 7 d) over d < digits, each digit the
    truncation of what the earlier ones left and the last one rounded to nearest even, saturated to int8."""
    rows, k = x.shape
    groups = x.float().reshape(rows, k // group_size, group_size)
    largest = groups.abs().amax(-1, keepdim=True)
    exponent = torch.frexp(largest)[1].clamp(min=-98) - 1  # largest in [2^E, 2^(E + 1))
    rest = groups.double() * torch.pow(2.0, 6 - exponent).double()
    total = torch.zeros_like(rest)
    for d in range(digits):
        digit = torch.trunc(rest) if d < digits - 1 else torch.round(rest).clamp(-128, 127)
        total += digit * 2.0 ** (-7 * d)
        rest = (rest - digit) * 128
    return (total * torch.pow(2.0, exponent - 6).double()).reshape(rows, k)


def _quantized_gemm(x, w, mins, group_size: int, x_digits) -> torch.Tensor:
    """x @ W.T in float64; with x_digits, the integer paths' arithmetic: the scale term over x rounded to that
    many digits, the min term over exact group sums (W = scales q + mins: y = s (q . x~) + m sum(x))."""
    if x_digits is None:
        return (x.double() @ w.T).to(x.dtype)
    rounded = round_x_digits(x, group_size, x_digits)
    m = mins.double().repeat_interleave(group_size, dim=1)
    y = rounded @ (w - m).T + x.double() @ m.T
    return y.to(x.dtype)


def w4a16_matmul(x, qweight, scales, mins, group_size: int, x_digits=None) -> torch.Tensor:
    """The oracle of ops.w4a16_prepack + w4a16_gemm, on the canonical weights: y = x @ W.T in float64, returned
    in x's dtype. x: [..., K] -> [..., N]. x_digits: x [M, K] as the CPU integer paths take it with
    ops.w4a16_gemm(..., x_digits) (round_x_digits)."""
    w = dequantize_w4(qweight, scales, mins, group_size).double()
    return _quantized_gemm(x, w, mins, group_size, x_digits)


def w8a16_matmul(x, qweight, scales, mins, group_size: int, x_digits=None) -> torch.Tensor:
    """w4a16_matmul for 8-bit qweight uint8 [N, K]: the oracle of ops.w8a16_gemm."""
    w = dequantize_w8(qweight, scales, mins, group_size).double()
    return _quantized_gemm(x, w, mins, group_size, x_digits)


# ---------------------------------------------------------------- trees (docs/design.md 3.2, 3.3, 4.3)
def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """bool [B, T, T]: [b, i, j] iff node j is an ancestor-or-self of node i (padding nodes: only self)."""
    batch, t = parents.shape
    mask = torch.eye(t, dtype=torch.bool).repeat(batch, 1, 1)
    for i in range(1, t):
        for b in range(batch):
            parent = int(parents[b, i])
            if parent >= 0:
                mask[b, i] |= mask[b, parent]
    return mask


def tree_attention(q, k_cache, v_cache, cache_lens, tree_mask=None, scale=None):
    """Attention of T new tokens (K/V already at [cache_len, cache_len + T)) over the cache, in float64.

    Row i sees every cached position and the new tokens its mask row allows (causal when tree_mask is None). A
    row whose every score is -inf (it sees nothing, or only keys that give -inf) is 0, as in the kernels, not 0 / 0.
    """
    batch, t, hq, d = q.shape
    hkv = k_cache.shape[2]
    scale = d**-0.5 if scale is None else scale
    out = torch.empty(batch, t, hq, d, dtype=torch.float64)
    for b in range(batch):
        length = int(cache_lens[b])
        if tree_mask is None:
            new_visible = torch.ones(t, t, dtype=torch.bool).tril()
        else:
            bits = torch.arange(t)
            new_visible = ((tree_mask[b][:, bits // 64] >> (bits % 64)) & 1).bool()
        visible = torch.cat([torch.ones(t, length, dtype=torch.bool), new_visible], dim=1)  # [T, L + T]
        keys = k_cache[b, : length + t].double().repeat_interleave(hq // hkv, dim=1)  # [L + T, Hq, D]
        values = v_cache[b, : length + t].double().repeat_interleave(hq // hkv, dim=1)
        scores = torch.einsum("thd,shd->hts", q[b].double(), keys) * scale
        scores = scores.masked_fill(~visible, float("-inf"))
        weights = torch.where((scores != float("-inf")).any(-1, keepdim=True), scores.softmax(-1), 0.0)
        out[b] = torch.einsum("hts,shd->thd", weights, values)
    return out.to(q.dtype)


def _empty_verdict(batch, t):
    """(accept_idx [B, T] of -1, accept_len [B], bonus [B]), int64."""
    return torch.full((batch, t), -1, dtype=torch.long), torch.zeros(batch, dtype=torch.long), torch.zeros(
        batch, dtype=torch.long)


def _children(parents_row, node):
    return [j for j in range(len(parents_row)) if int(parents_row[j]) == node]


def tree_verify_greedy(tokens, parents, logits):
    """Walk from the root: move to the child whose token is the argmax of the target at the current node."""
    batch, t = tokens.shape
    accept_idx, accept_len, bonus = _empty_verdict(batch, t)
    for b in range(batch):
        path, node = [0], 0
        while True:
            target = int(torch.argmax(logits[b, node]))
            nxt = next((c for c in _children(parents[b], node) if int(tokens[b, c]) == target), None)
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
        accept_idx[b, : len(path)] = torch.tensor(path)
        accept_len[b], bonus[b] = len(path), target
    return accept_idx, accept_len, bonus


def target_probs(logits_row, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """float32 p = softmax(logits / temperature), then top-k (the k largest, ties at the k-th kept), then top-p
    (the largest tokens while the mass before them is < top_p; ties at the cut kept), renormalised."""
    p = torch.softmax(logits_row.float() / temperature, dim=-1)
    if top_k > 0:
        kth = torch.topk(p, min(top_k, p.numel())).values[-1]
        p = torch.where(p >= kth, p, torch.zeros_like(p))
    if top_p < 1.0:
        sorted_p = torch.sort(p, descending=True).values
        before = torch.cumsum(sorted_p.double(), 0) - sorted_p.double()  # mass strictly before each rank
        cutoff = sorted_p[before < top_p * float(p.sum())][-1]  # smallest kept value; ties are kept too
        p = torch.where(p >= cutoff, p, torch.zeros_like(p))
    return p / p.sum()


def sample_from(p: torch.Tensor, u: float) -> int:
    """Inverse CDF: the first token whose cumulative mass exceeds u * total (never a zero-mass token)."""
    cdf = torch.cumsum(p.double(), 0)
    index = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=torch.float64), right=True))
    index = min(index, p.numel() - 1)
    while p[index] == 0:  # u * total landed exactly on a boundary or past the last nonzero token
        index -= 1
    return index


def tree_verify_sample(tokens, parents, logits, uniforms, temperature, top_p=1.0, top_k=0, draft_probs=None):
    """Lossless recursive rejection sampling over the tree.

    Children of the current node are tried in index order; uniforms[b, i] decides node i, uniforms[b, T]
    samples the bonus. Deterministic drafts (draft_probs None): accept x with probability p(x), else p(x) = 0
    and renormalise. Sampled drafts: the children of node j were drawn independently from
    q = draft_probs[b, j]; accept with min(1, p(x) / q(x)), else p = norm(max(p - q, 0)).
    """
    batch, t = tokens.shape
    accept_idx, accept_len, bonus = _empty_verdict(batch, t)
    for b in range(batch):
        path, node = [0], 0
        while True:
            p = target_probs(logits[b, node], temperature, top_p, top_k)
            q = None if draft_probs is None else draft_probs[b, node].float()
            accepted = None
            for child in _children(parents[b], node):
                x, u = int(tokens[b, child]), float(uniforms[b, child])
                if q is None:
                    if u < float(p[x]):
                        accepted = child
                        break
                    p[x] = 0.0
                else:
                    if float(p[x]) > 0 and u * float(q[x]) < float(p[x]):
                        accepted = child
                        break
                    p = torch.clamp(p - q, min=0.0)
                p = p / p.sum()
            if accepted is None:
                break
            path.append(accepted)
            node = accepted
        accept_idx[b, : len(path)] = torch.tensor(path)
        accept_len[b] = len(path)
        bonus[b] = sample_from(p, float(uniforms[b, t]))
    return accept_idx, accept_len, bonus


def kv_compact(k_cache, v_cache, cache_lens, accept_idx, accept_len):
    """In place: entry cache_len + accept_idx[b, i] moves to cache_len + i; cache_lens += accept_len.
    Caches are [B, S, H, D] or stacked [L, B, S, H, D]."""
    for b in range(cache_lens.shape[0]):
        start, n = int(cache_lens[b]), int(accept_len[b])
        src = start + accept_idx[b, :n]
        for cache in (k_cache, v_cache):
            if cache.dim() == 5:
                cache[:, b, start : start + n] = cache[:, b, src].clone()
            else:
                cache[b, start : start + n] = cache[b, src].clone()
        cache_lens[b] += n


# ---------------------------------------------------------------- Llama layer ops (the runner's glue)
def rms_norm(x, weight, eps: float):
    """x * weight / sqrt(mean(x^2) + eps) over the last dim, in float64, returned in x's dtype."""
    x64 = x.double()
    return (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()).to(x.dtype)


def add_rms_norm(x, residual, weight, eps: float):
    """(x + residual, rms_norm(x + residual)); the sum is rounded to x's dtype before it is normalised."""
    total = x + residual
    return total, rms_norm(total, weight, eps)


def silu_and_mul(x):
    """x [..., 2H] = [gate | up] -> silu(gate) * up, in float64, returned in x's dtype."""
    gate, up = x.double().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)


def rotate_pairs(x, cos, sin):
    """x [..., D] with cos/sin [..., D/2] broadcastable: (x[2i], x[2i+1]) rotated by the angle of (cos_i, sin_i)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def rope_and_cache(q, k, v, positions, rope_cos, rope_sin, k_cache, v_cache, cache_lens):
    """RoPE of q and k at `positions` (float64), K/V written at [cache_lens, cache_lens + T); returns RoPE(q)."""
    cos = rope_cos.double()[positions][:, :, None]  # [B, T, 1, D/2]
    sin = rope_sin.double()[positions][:, :, None]
    t = q.shape[1]
    for b in range(q.shape[0]):
        start = int(cache_lens[b])
        k_cache[b, start : start + t] = rotate_pairs(k[b].double(), cos[b], sin[b]).to(k_cache.dtype)
        v_cache[b, start : start + t] = v[b]
    return rotate_pairs(q.double(), cos, sin).to(q.dtype)
