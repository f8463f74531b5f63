"""The fuzzer's driver (issue 26): seeded hypothesis settings, the drawn backend (device, CPU path), drawn memory
layouts and non-finite values, and the two outcomes every case must have:
- a valid call matches the op's reference (python/specdec_kernels/reference.py) and changes no input it does
  not own;
- a call made invalid in one drawn way (corruptions.py) raises ValueError naming the offending argument, and
  every input, caches included, equals its copy taken before the call.

Environment: SPECDEC_FUZZ_CASES (cases per op; `make test` runs the default, `make fuzz` 10,000),
SPECDEC_FUZZ_SEED, and SPECDEC_FUZZ_BLOB (one failing case exactly: conftest.py prints the line that sets it)."""
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable

import hypothesis
import pytest
import torch
from corruptions import corruptions
from helpers import TOLERANCES, W4A16_ISAS, cpu_isa, isa_supported
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CASES = int(os.environ.get("SPECDEC_FUZZ_CASES", "60"))
SEED = int(os.environ.get("SPECDEC_FUZZ_SEED", "26"))
BLOB = os.environ.get("SPECDEC_FUZZ_BLOB")

# Every CPU path this machine has (W4A16's list names them all); each op runs its own kernel for the path.
CPU_PATHS = [isa for isa in W4A16_ISAS if isa_supported(isa)]
ACTIVATION_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SPECIALS = [math.nan, math.inf, -math.inf]

# test node id -> Counter of its cases' outcomes ("valid", "non-finite", "error"); conftest.py sets the test
# running now (a pytest fixture would be function-scoped: hypothesis refuses those) and prints the counts.
OUTCOMES = defaultdict(Counter)
RUNNING = {"test": None}


def fuzz(test):
    """CASES cases from SEED, the same cases on every run: no example database, no deadline (the references are
    slow Python loops), and no health check about large or slow inputs (maximal trees are the point)."""
    test = settings(max_examples=CASES, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])(test)
    test = hypothesis.seed(SEED)(test)
    if BLOB:
        test = hypothesis.reproduce_failure(hypothesis.__version__, BLOB.encode())(test)
    return test


def count(outcome: str):
    OUTCOMES[RUNNING["test"]][outcome] += 1


# ---------------------------------------------------------------- backends
def devices(cuda_kernels: bool):
    """The device of a case: CUDA only where the op has CUDA kernels and this machine a GPU."""
    return st.sampled_from(["cpu"] + (["cuda"] if cuda_kernels and torch.cuda.is_available() else []))


def cpu_paths():
    return st.sampled_from(CPU_PATHS)


def on(device, args: dict) -> dict:
    return {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in args.items()}


# ---------------------------------------------------------------- drawn values and layouts
def generator(draw) -> torch.Generator:
    """Bulk values come from a drawn seed: drawing every element would make cases slow and shrinking useless."""
    return torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1), label="seed"))


def with_specials(draw, t: torch.Tensor, values=tuple(SPECIALS)) -> torch.Tensor:
    """t, or (about one tensor in eight) a copy with 1-3 entries set to drawn `values` at drawn places."""
    if t.numel() == 0 or draw(st.integers(0, 7), label="specials") != 0:
        return t
    t = t.clone()
    flat = t.view(-1)
    for _ in range(draw(st.integers(1, 3))):
        flat[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(values))
    return t


def poison(dtype: torch.dtype):
    """What unused memory holds: NaN for floats (a read of it shows up in the result), -7 for integers (an
    out-of-range index or parent wherever one is read)."""
    return math.nan if dtype.is_floating_point else -7


def laid_out(draw, t: torch.Tensor, last_dim_contiguous: bool = True) -> torch.Tensor:
    """t's values in a drawn layout: contiguous; a view into a larger poisoned buffer (a read past the view shows
    up); two dims' storage swapped; or (when the last dim may be strided) every other element of a buffer."""
    kinds = ["contiguous", "padded", "swapped"] + ([] if last_dim_contiguous else ["every other"])
    kind = draw(st.sampled_from(kinds), label="layout") if t.dim() > 0 else "contiguous"
    if kind == "padded":
        dim = draw(st.integers(0, t.dim() - 1))
        shape = list(t.shape)
        shape[dim] += draw(st.integers(1, 3))
        buffer = torch.full(shape, poison(t.dtype), dtype=t.dtype)
        view = buffer.narrow(dim, draw(st.integers(0, shape[dim] - t.shape[dim])), t.shape[dim])
        return view.copy_(t)
    swappable = t.dim() - (1 if last_dim_contiguous else 0)
    if kind == "swapped" and swappable >= 2:
        i, j = sorted(draw(st.lists(st.integers(0, swappable - 1), min_size=2, max_size=2, unique=True)))
        return t.transpose(i, j).contiguous().transpose(i, j)
    if kind == "every other":
        buffer = torch.full((*t.shape, 2), poison(t.dtype), dtype=t.dtype)
        return buffer[..., 0].copy_(t)
    return t


# ---------------------------------------------------------------- outcomes
def tensors(args: dict) -> dict:
    return {name: value for name, value in args.items() if isinstance(value, torch.Tensor)}


def snapshot(args: dict) -> dict:
    return {name: t.clone() for name, t in tensors(args).items()}


def assert_unchanged(before: dict, args: dict, names=None):
    """Each tensor (of `names`, default all) equals its copy, NaN for NaN."""
    for name, copy in before.items():
        if names is None or name in names:
            torch.testing.assert_close(args[name], copy, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, name=name: f"{name} was modified: {m}")


def assert_matches_reference(got: torch.Tensor, expected: torch.Tensor, atol_floor: float = 0.0):
    """got vs its float64 reference within the tolerances of its dtype (atol at least atol_floor, a path's own
    error bound), NaN/inf where the reference has them, but either one: float32 kernels flush what float64 keeps
    (silu(-100) is -0 in float32, so silu(-100) x inf is NaN where the reference has -inf)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    atol, rtol = TOLERANCES[got.dtype]
    atol = max(atol, atol_floor)
    got, expected = got.cpu().double(), expected.cpu().double()
    finite = expected.isfinite()
    assert torch.equal(got.isfinite(), finite), f"non-finite at {(got.isfinite() != finite).nonzero()[:5].tolist()}"
    torch.testing.assert_close(got[finite], expected[finite], atol=atol, rtol=rtol)


def names_argument(message: str, name: str) -> bool:
    """Whether the error's own text (not a C++ trace after it) has `name` as a word: `x` in "x's", not in "x_digits"."""
    text = message.split("Exception raised from")[0]
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None


def assert_rejected(op: Callable, args: dict, names) -> None:
    """op(**args) raises ValueError whose message names one of `names`, and changes no input."""
    before = snapshot(args)
    with pytest.raises(ValueError) as error:
        op(**args)
    assert any(names_argument(str(error.value), name) for name in names), (
        f"the error does not name {' or '.join(names)}: {error.value}")
    assert_unchanged(before, args)


def check_untouched(check_valid: Callable, args: dict, writes=()) -> str:
    """check_valid(args) (it calls the op and returns the outcome to count), then every input but the op's
    outputs in place (`writes`, checked by check_valid) equals its copy."""
    before = snapshot({name: t for name, t in args.items() if name not in writes})
    outcome = check_valid(args)
    assert_unchanged(before, args)
    return outcome


def run_case(data, isa: str, op: Callable, cases, corruption_list, check_valid: Callable, writes=()):
    """The fuzzer's one step: draw a case from `cases` ((device, the op's arguments)) and one of corruption_list
    or none; on the drawn CPU path, the corruption's error, or check_valid(args), which returns the outcome to
    count ("valid" or "non-finite") and leaves every input but `writes` as it was."""
    device, args = data.draw(cases, label="case")
    args = on(device, args)
    corruption = data.draw(corruptions(*corruption_list), label="corruption")
    with cpu_isa(isa):
        if corruption is None:
            count(check_untouched(check_valid, args, writes))
        else:
            assert_rejected(op, args, corruption.apply(data.draw, args))
            count("error")
