"""Fuzz kv_compact: plain and stacked caches of any dtype, accepted paths of 1 to T nodes, cache lengths from 0 to
a path that ends in the last slot, accept_idx past the path poisoned (never read), strided index tensors; a bad
path, length or argument must be refused with the caches and cache_lens untouched."""
import torch
from corruptions import (Corruption, elsewhere, not_contiguous, wrong_dtype, wrong_rank, wrong_size,
                         wrong_value)
from fuzzing import (assert_unchanged, cpu_paths, devices, fuzz, generator, laid_out, on, poison, run_case,
                     snapshot)
from hypothesis import given
from hypothesis import strategies as st
from specdec_kernels import ops, reference

CACHE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.uint8, torch.int64]


@st.composite
def kv_compact_cases(draw):
    """(device, the op's arguments: k_cache, v_cache, cache_lens, accept_idx, accept_len)."""
    device = draw(devices(cuda_kernels=True))
    batch, t, g = draw(st.integers(1, 4)), draw(st.integers(1, 40)), generator(draw)
    accept_idx = torch.full((batch, t), poison(torch.int64))
    accept_len, lens = torch.zeros(batch, dtype=torch.int64), []
    for b in range(batch):
        n = draw(st.integers(1, t))
        path = [0] + sorted(torch.randperm(t - 1, generator=g)[: n - 1].add(1).tolist())  # increasing, from the root
        accept_idx[b, :n], accept_len[b] = torch.tensor(path), n
        lens.append((path[-1], draw(st.integers(0, 50))))
    s_max = max(last + length for last, length in lens) + 1 + draw(st.integers(0, 3))  # 0: a path ends in the last slot
    layers = (draw(st.integers(1, 3)),) if draw(st.booleans(), label="stacked") else ()
    shape = (*layers, batch, s_max, draw(st.integers(1, 3)), draw(st.integers(1, 9)))
    dtype = draw(st.sampled_from(CACHE_DTYPES))
    k_cache, v_cache = (torch.randn(shape, generator=g).mul(50).to(dtype) for _ in range(2))
    return device, dict(k_cache=k_cache, v_cache=v_cache,
                        cache_lens=laid_out(draw, torch.tensor([length for _, length in lens], dtype=torch.int32)),
                        accept_idx=laid_out(draw, accept_idx), accept_len=laid_out(draw, accept_len))


WRITES = ("k_cache", "v_cache", "cache_lens")


def check_compaction(args):
    """Caches and cache_lens as the reference leaves them."""
    expected = snapshot({name: args[name].cpu() for name in WRITES})
    reference.kv_compact(*expected.values(), args["accept_idx"].cpu(), args["accept_len"].cpu())
    ops.kv_compact(**args)
    assert_unchanged(expected, on("cpu", args))
    return "valid"


def broken_path(draw, args):
    """One row's path: not starting at the root, not increasing, or 0 / more than T nodes long."""
    idx, n = args["accept_idx"].clone(), args["accept_len"].clone()
    b, t = draw(st.integers(0, idx.shape[0] - 1)), idx.shape[1]
    kind = draw(st.sampled_from(["root", "order", "length"] if n[b] >= 2 else ["root", "length"]))
    if kind == "root":
        idx[b, 0] = draw(st.sampled_from([1, -1, 5]))
    elif kind == "order":
        i = draw(st.integers(1, int(n[b]) - 1))
        idx[b, i] = idx[b, i - 1] - draw(st.integers(0, 2))
    else:
        n[b] = draw(st.sampled_from([0, -1, t + 1, t + 9]))
    args.update(accept_idx=idx, accept_len=n)
    return ("accept_idx", "accept_len")


def overflowing_lens(draw, args):
    """One row whose path would end at or past S_max, or a negative length."""
    lens = args["cache_lens"].clone()
    b = draw(st.integers(0, lens.numel() - 1))
    s_max = args["k_cache"].shape[-3]
    last = int(args["accept_idx"][b, int(args["accept_len"][b]) - 1])
    lens[b] = draw(st.one_of(st.integers(s_max - last, s_max + 3), st.integers(-50, -1)))
    return lens


CORRUPTIONS = [
    Corruption("accept_idx, accept_len: not a path", broken_path),
    wrong_value("cache_lens", "past capacity or negative", overflowing_lens),
    wrong_rank("k_cache", names=("k_cache", "v_cache")),
    *(wrong_size("v_cache", dim, names=("v_cache", "k_cache")) for dim in range(4)),
    wrong_dtype("v_cache", [torch.float64, torch.int8], names=("v_cache", "k_cache")),
    not_contiguous("k_cache"),
    not_contiguous("v_cache"),
    wrong_dtype("cache_lens", [torch.int64, torch.float32]),
    wrong_dtype("accept_idx", [torch.int32, torch.float32]),
    wrong_dtype("accept_len", [torch.int32, torch.uint8]),
    wrong_rank("cache_lens"),
    wrong_rank("accept_idx"),
    wrong_rank("accept_len"),
    wrong_size("cache_lens", 0),
    wrong_size("accept_idx", 0),
    wrong_size("accept_len", 0),
    *elsewhere("cache_lens", "accept_idx"),
]


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_kv_compact(isa, data):
    run_case(data, isa, ops.kv_compact, kv_compact_cases(), CORRUPTIONS, check_compaction, WRITES)
