"""What greedy decoding promises bit for bit (docs/design.md 4.6), on the tiny target:

- the same logits and tokens on every run and with any number of intra-op threads;
- on CPU paths of one arithmetic, the same logits: int8 activation digits (amx, avx512vnni), float32 with FMA
  (avx512, avx2); generic (no FMA) has bits of its own. Across these families logits differ in low bits, so
  tokens may differ at near-ties; on every path, each method's greedy tokens are plain decoding's;
- batch invariance: a token's logits decoded alone (T = 1) equal its logits inside a verification forward of 16
  tree nodes, on every path. A negative control shows the comparison sees a layer that is not batch-invariant.

(amx computes causal forwards of 64 tokens or more, prefill chunks only, on bf16 tiles: after such a prompt its
bits differ from avx512vnni's. The prompts here are shorter.)"""
import pytest
import torch
from helpers import W4A16_ISAS, cpu_isa, isa_params, isa_supported
from specdec_kernels.decoding import generate
from specdec_kernels.methods import METHODS
from specdec_kernels.quant import dense_weight
from specdec_kernels.tree import DraftTree

PROMPT = [1, 5, 7, 9, 3]
# CPU paths of one arithmetic (generic, without FMA, is alone in its own)
ISA_FAMILIES = {"int8 digits": ("amx", "avx512vnni"), "float32 FMA": ("avx512", "avx2")}


def decoded_logits(model, tokens) -> torch.Tensor:
    """The logits of each token fed one at a time, T = 1 decoding steps: [n, V]."""
    model.setup_cache(1, model.max_seq_len)
    rows = []
    for token in tokens:
        logits, _ = model(torch.tensor([[token]]))
        model.commit(1)
        rows.append(logits[0, 0])
    return torch.stack(rows)


def verified_logits(model, prefix, draft: DraftTree) -> torch.Tensor:
    """The logits of every node of `draft` (root first) verified in one tree-masked forward after `prefix`: [T, V]."""
    model.setup_cache(1, model.max_seq_len)
    model(torch.tensor([prefix]))
    model.commit(len(prefix))
    logits, _ = model(draft.tokens, draft.positions(model.cache_lens), draft.mask())
    return logits[0]


def random_draft(nodes: int, seed: int) -> DraftTree:
    """A tree of `nodes` nodes (parents drawn below earlier nodes: chains and branches)."""
    g = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (), generator=g)) for i in range(1, nodes)]
    return DraftTree(torch.randint(0, 40, (1, nodes), generator=g), torch.tensor([parents]))


def chain_to(draft: DraftTree, node: int) -> list:
    """The tokens from the root to `node`."""
    path = [node]
    while draft.parents[0, path[-1]] > 0:
        path.append(int(draft.parents[0, path[-1]]))
    return draft.tokens[0, [0] + path[::-1] if node else [0]].tolist()


def batch_variant_nodes(model, seeds=range(3)) -> list:
    """(seed, node) of the 16-node trees' nodes whose verified logits differ in any bit from their root-to-node
    chain decoded one token at a time."""
    differing = []
    for seed in seeds:
        draft = random_draft(16, seed)
        together = verified_logits(model, PROMPT, draft)
        for node in range(16):
            alone = decoded_logits(model, PROMPT + chain_to(draft, node))[-1]
            if not torch.equal(alone, together[node]):
                differing.append((seed, node))
    return differing


# ---------------------------------------------------------------- batch invariance
@pytest.mark.parametrize("isa", isa_params(W4A16_ISAS))
def test_verification_logits_equal_decoding_alone(tiny, isa):
    with cpu_isa(isa):
        assert batch_variant_nodes(tiny) == []


def test_the_batch_invariance_check_sees_a_dense_head(tiny, monkeypatch):
    """Negative control: torch's float matmul picks other kernels for 16 rows than for 1, so with the output
    head as a plain nn.Linear (the same weights) the same check finds nodes whose logits differ."""
    head = torch.nn.Linear(tiny.config.dim, tiny.config.vocab_size, bias=False)
    head.weight.data = dense_weight(tiny.lm_head)
    monkeypatch.setattr(tiny, "lm_head", head)
    assert batch_variant_nodes(tiny, seeds=[0])


# ---------------------------------------------------------------- runs and threads
def test_logits_are_bitwise_the_same_on_every_run_and_thread_count(tiny, threads):
    tokens = PROMPT + generate(tiny, PROMPT, 30).tokens
    draft = random_draft(16, 0)
    runs = []
    for n in (1, 2, 1, 2):
        threads(n)
        runs.append((decoded_logits(tiny, tokens), verified_logits(tiny, PROMPT, draft)))
    for decoded, verified in runs[1:]:
        assert torch.equal(decoded, runs[0][0]) and torch.equal(verified, runs[0][1])


@pytest.mark.parametrize("method", list(METHODS))
def test_greedy_tokens_are_the_same_on_every_run_and_thread_count(tiny, make_decoder, threads, method):
    decoder = make_decoder(tiny)
    outputs = []
    for n in (1, 2, 1, 2):
        threads(n)
        outputs.append(decoder.generate(method, PROMPT, 60).tokens)
    assert outputs[1:] == outputs[:1] * 3


# ---------------------------------------------------------------- CPU paths
@pytest.mark.parametrize("family", list(ISA_FAMILIES))
def test_logits_are_bitwise_the_same_on_paths_of_one_arithmetic(tiny, family):
    paths = [isa for isa in ISA_FAMILIES[family] if isa_supported(isa)]
    if len(paths) < 2:
        pytest.skip(f"this CPU has fewer than two of {ISA_FAMILIES[family]}")
    tokens = PROMPT + generate(tiny, PROMPT, 30).tokens
    logits = []
    for isa in paths:
        with cpu_isa(isa):
            logits.append((decoded_logits(tiny, tokens), verified_logits(tiny, PROMPT, random_draft(16, 0))))
    for decoded, verified in logits[1:]:
        assert torch.equal(decoded, logits[0][0]) and torch.equal(verified, logits[0][1])


@pytest.mark.parametrize("isa", isa_params(W4A16_ISAS))
def test_every_method_gives_plain_greedy_tokens_on_every_path(tiny, make_decoder, isa):
    decoder = make_decoder(tiny)
    with cpu_isa(isa):
        for seed in range(2):
            prompt = torch.randint(0, 40, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
            plain = generate(tiny, prompt, 40).tokens
            for method in METHODS:
                assert decoder.generate(method, prompt, 40).tokens == plain, (method, seed)
