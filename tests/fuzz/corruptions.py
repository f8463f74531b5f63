"""Ways to make one argument of an op call invalid, drawn by the fuzzer. Each Corruption changes the arguments
in place and returns the names an error may give for it (the offending argument, or the pair a mismatch is
between)."""
from collections.abc import Callable

import torch
from hypothesis import assume
from hypothesis import strategies as st


class Corruption:
    """`apply(draw, args)` makes args invalid in one way and returns the argument names its error may give."""

    def __init__(self, label: str, apply: Callable):
        self.label, self.apply = label, apply

    def __repr__(self):  # what a failing case prints
        return f"Corruption({self.label!r})"


def corruptions(*items):
    """None (a valid call) or one of items, about as often."""
    return st.one_of(st.none(), st.sampled_from(items))


def wrong_value(name: str, label: str, make: Callable, names=None) -> Corruption:
    """args[name] = make(draw, args): a value the op must refuse."""

    def apply(draw, args):
        args[name] = make(draw, args)
        return names or (name,)

    return Corruption(f"{name}: {label}", apply)


def wrong_dtype(name: str, dtypes, names=None) -> Corruption:
    """One of dtypes other than the argument's own."""
    return wrong_value(name, "dtype", lambda draw, args: args[name].to(
        draw(st.sampled_from([d for d in dtypes if d != args[name].dtype]))), names)


def _one_dim_more_or_less(draw, t):
    """A leading dim of 1 more, or the first index (one dim less)."""
    return t[0] if t.dim() > 0 and t.shape[0] > 0 and draw(st.booleans()) else t[None]


def wrong_rank(name: str, names=None) -> Corruption:
    return wrong_value(name, "rank", lambda draw, args: _one_dim_more_or_less(draw, args[name]), names)


def _resized(draw, t, dim):
    """Dim `dim` one to three longer (zeros appended) or shorter."""
    size = t.shape[dim]
    new = draw(st.integers(max(size - 3, 0), size + 3).filter(lambda n: n != size))
    if new < size:
        return t.narrow(dim, 0, new)
    extra = list(t.shape)
    extra[dim] = new - size
    return torch.cat([t, t.new_zeros(extra)], dim)


def wrong_size(name: str, dim: int, names=None) -> Corruption:
    return wrong_value(name, f"size of dim {dim}", lambda draw, args: _resized(draw, args[name], dim), names)


def _strided(t):
    """Every other element of a buffer: strided in every dim, the last included. A tensor whose dims are all
    of size 1 is contiguous whatever its strides: no such case."""
    strided = torch.stack([t, t], -1)[..., 0]
    assume(not strided.is_contiguous())
    return strided


def not_contiguous(name: str, names=None) -> Corruption:
    return wrong_value(name, "not contiguous", lambda draw, args: _strided(args[name]), names)


def _overflowing_lens(draw, args):
    """One row's cache_lens past S_max - T (caches [B, S_max, H, D], q [B, T, H, D]), or negative."""
    lens = args["cache_lens"].clone()
    s_max, t = args["k_cache"].shape[1], args["q"].shape[1]
    lens[draw(st.integers(0, lens.numel() - 1))] = draw(st.one_of(st.integers(s_max - t + 1, s_max + 5),
                                                                  st.integers(-300, -1)))
    return lens


def cache_overflow() -> Corruption:
    """T new tokens no longer fit in a row's cache after cache_lens (or cache_lens is negative)."""
    return wrong_value("cache_lens", "past capacity or negative", _overflowing_lens)


def elsewhere(*names) -> list:
    """For each of `names`, a move to another device than the other arguments': none without a GPU."""
    if not torch.cuda.is_available():
        return []
    return [wrong_value(name, "other device", lambda draw, args, name=name: args[name].to(
        "cpu" if args[name].is_cuda else "cuda")) for name in names]
