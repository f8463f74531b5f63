"""Fuzz tree_verify_greedy and tree_verify_sample: random topologies up to 256 nodes, ragged batches, tokens
repeated among siblings (and, for greedy, outside the vocabulary), logits of every float dtype and layout with
NaN/inf, temperature, top-p, top-k, sampled or deterministic drafts; a broken tree or bad argument."""
import itertools
import math
from functools import partial

import torch
from corruptions import Corruption, elsewhere, wrong_dtype, wrong_rank, wrong_size, wrong_value
from draft_trees import broken_parents, draft_trees, real_nodes
from fuzzing import cpu_paths, devices, fuzz, generator, laid_out, on, run_case, with_specials
from helpers import logits_favouring_children
from hypothesis import given
from hypothesis import strategies as st
from specdec_kernels import ops, reference

LOGIT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@st.composite
def verify_cases(draw, sampling: bool):
    """(device, the op's arguments): tokens, parents, logits [+ temperature, top_p, top_k, draft_probs, uniforms]."""
    device = draw(devices(cuda_kernels=True))
    parents = draw(draft_trees(max_nodes=40))
    batch, t = parents.shape
    vocab, g = draw(st.one_of(st.integers(1, 300), st.integers(301, 5000))), generator(draw)
    # Greedy compares tokens with an argmax: tokens outside the vocabulary are valid and never match.
    low, high = (0, vocab) if sampling else (-2, vocab + 2)
    tokens = torch.randint(low, high, (batch, t), generator=g)
    logits = logits_favouring_children(tokens.clamp(0, vocab - 1), parents, vocab, draw(st.integers(0, 2**31)))
    if draw(st.booleans(), label="ties"):  # whole numbers: ties at the argmax, the k-th value and the top-p cut
        logits = logits.round()
    dtypes = LOGIT_DTYPES if device == "cpu" else LOGIT_DTYPES[:3]
    logits = laid_out(draw, with_specials(draw, logits.to(draw(st.sampled_from(dtypes)))), last_dim_contiguous=False)
    args = dict(tokens=laid_out(draw, tokens), parents=laid_out(draw, parents.to(draw(st.sampled_from(
        [torch.int32, torch.int64])))), logits=logits)
    if sampling:
        draft = torch.softmax(torch.randn(batch, t, vocab, generator=g), -1) if draw(st.booleans()) else None
        args.update(temperature=draw(st.sampled_from([0.0, 0.3, 1.0, 1.7])), top_p=draw(st.sampled_from(
            [1.0, 0.95, 0.5, 0.01])), top_k=draw(st.integers(0, vocab + 2)), draft_probs=draft,
            uniforms=with_specials(draw, torch.rand(batch, t + 1, generator=g), (math.nan, 1.0, 1.5, -0.5)))
    return device, args


def assert_valid_verdict(args, verdict):
    """Whatever the logits hold: a path from the root along parent links, -1 after it, a bonus in the vocabulary."""
    accept_idx, accept_len, bonus = (v.cpu() for v in verdict)
    parents, vocab = args["parents"].cpu(), args["logits"].shape[2]
    assert accept_idx.shape == parents.shape and accept_idx.dtype == accept_len.dtype == bonus.dtype == torch.int64
    for b in range(parents.shape[0]):
        n = int(accept_len[b])
        path = accept_idx[b, :n].tolist()
        assert 1 <= n <= real_nodes(parents[b]) and path[0] == 0, (n, path)
        assert all(int(parents[b, child]) == parent for parent, child in itertools.pairwise(path)), path
        assert (accept_idx[b, n:] == -1).all() and 0 <= int(bonus[b]) < vocab


def exactly_defined(args) -> bool:
    """Whether the reference defines the verdict: no NaN logits, and for sampling no +inf logits (softmax is NaN),
    no row of only -inf and uniforms in [0, 1). Otherwise only assert_valid_verdict holds."""
    logits = args["logits"].double()
    if logits.isnan().any():
        return False
    if args.get("temperature", 0) == 0:
        return True
    uniforms = args["uniforms"]
    return bool((logits < math.inf).all() and (logits > -math.inf).any(-1).all()
                and (uniforms >= 0).all() and (uniforms < 1).all())


def check_verdict(op, args):
    verdict = op(**args)
    assert_valid_verdict(args, verdict)
    if not exactly_defined(args):
        return "non-finite"
    cpu = on("cpu", args)
    if cpu.get("temperature", 0) == 0:
        expected = reference.tree_verify_greedy(cpu["tokens"], cpu["parents"], cpu["logits"])
    else:
        expected = reference.tree_verify_sample(**cpu)
    for got, want in zip(verdict, expected):
        assert torch.equal(got.cpu(), want), (got, want)
    return "valid"


def node_count(new_t, args):
    """Every per-node argument resized to new_t nodes (the parents a chain): only the count is wrong."""
    batch, vocab = args["tokens"].shape[0], args["logits"].shape[2]
    args.update(tokens=torch.zeros(batch, new_t, dtype=torch.int64), logits=torch.randn(batch, new_t, vocab),
                parents=torch.arange(-1, new_t - 1).repeat(batch, 1))
    if "uniforms" in args:
        args.update(uniforms=torch.rand(batch, new_t + 1), draft_probs=None)
    return ("tokens", "parents")


TREE_CORRUPTIONS = [
    broken_parents(),
    Corruption("T: 0 or 257 nodes", lambda draw, args: node_count(draw(st.sampled_from([0, 257])), args)),
    wrong_dtype("tokens", [torch.int32, torch.float32, torch.int16]),
    wrong_dtype("parents", [torch.int16, torch.float32, torch.uint8]),
    wrong_rank("tokens"),
    wrong_rank("parents"),
    wrong_size("parents", 0, names=("tokens", "parents")),
    wrong_size("parents", 1, names=("tokens", "parents")),
    wrong_rank("logits"),
    wrong_size("logits", 0),
    wrong_size("logits", 1),
    wrong_value("logits", "empty vocabulary", lambda draw, a: a["logits"][..., :0]),
    wrong_dtype("logits", [torch.int32, torch.int64, torch.bool]),
    *elsewhere("parents", "logits"),
]


def sampling(corruption: Corruption) -> Corruption:
    """corruption at a temperature above 0: temperature 0 is greedy, which takes no sampling arguments."""

    def apply(draw, args):
        args["temperature"] = args["temperature"] or 1.0
        return corruption.apply(draw, args)

    return Corruption(corruption.label, apply)


SAMPLING_CORRUPTIONS = [sampling(c) for c in TREE_CORRUPTIONS + [
    wrong_value("tokens", "outside the vocabulary", lambda draw, a: a["tokens"].clone().fill_(
        draw(st.sampled_from([-1, a["logits"].shape[2], 2**40])))),
    wrong_value("temperature", "not > 0", lambda draw, a: draw(st.sampled_from([-1.0, -1e-9, math.nan, -math.inf]))),
    wrong_value("top_p", "outside (0, 1]", lambda draw, a: draw(st.sampled_from([0.0, -0.5, 1.0001, math.nan]))),
    wrong_value("top_k", "negative", lambda draw, a: draw(st.integers(-5, -1))),
    wrong_dtype("uniforms", [torch.float64, torch.float16]),
    wrong_size("uniforms", 1),
    wrong_rank("uniforms"),
    wrong_value("draft_probs", "not the shape of logits", lambda draw, a: torch.rand(
        *a["logits"].shape[:2], a["logits"].shape[2] + draw(st.sampled_from([-1, 1]))).to(a["logits"].device)),
    *elsewhere("uniforms"),
]]


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_tree_verify_greedy(isa, data):
    run_case(data, isa, ops.tree_verify_greedy, verify_cases(sampling=False), TREE_CORRUPTIONS,
             partial(check_verdict, ops.tree_verify_greedy))


@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_tree_verify_sample(isa, data):
    run_case(data, isa, ops.tree_verify_sample, verify_cases(sampling=True), SAMPLING_CORRUPTIONS,
             partial(check_verdict, ops.tree_verify_sample))
