"""Tree verification: the fused ops vs the naive procedure (reduce all T rows, then enumerate the paths)."""
import torch

from specdec_kernels import ops
from specdec_kernels.bench.common import machine_info, print_table, time_interleaved, write_json

TOKENS, VOCABS = [8, 32, 64, 128], [32000, 49152, 128256]


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="T = 64, V = 49152 only")
    parser.add_argument("--json", help="write all points here")
    parser.add_argument("--repeats", type=int, default=7)


def eagle_like_tree(t: int, seed: int):
    """A top-k-shaped tree: each node has up to 4 children, depth grows with T; siblings distinct."""
    g = torch.Generator().manual_seed(seed)
    parents, children = [-1], [0]
    for i in range(1, t):
        parent = int(torch.randint(max(0, i - 6), i, (1,), generator=g))
        parents.append(parent)
        children.append(0)
        children[parent] += 1
    tokens = [0] + [1000 + 7 * i for i in range(1, t)]
    return torch.tensor([tokens]), torch.tensor([parents])


def leaf_paths(parents):
    """[n_leaves, depth + 1] node indices root..leaf, padded with -1 (EAGLE's retrieve_indices)."""
    p = parents[0].tolist()
    has_child = set(p[1:])
    paths = []
    for leaf in range(len(p)):
        if leaf in has_child:
            continue
        path, node = [], leaf
        while node >= 0:
            path.append(node)
            node = p[node]
        paths.append(path[::-1])
    width = max(len(x) for x in paths)
    return torch.tensor([x + [-1] * (width - len(x)) for x in paths])


def naive_greedy(tokens, logits, paths):
    """Argmax of every row, then the longest path whose tokens match (as in EAGLE's evaluate_posterior)."""
    argmax = logits[0].argmax(-1)
    valid = paths[:, 1:] >= 0
    candidates = torch.where(valid, tokens[0][paths[:, 1:].clamp(min=0)], -1)
    predicted = argmax[paths[:, :-1].clamp(min=0)]
    accepted = ((candidates == predicted) & valid).int().cumprod(1).sum(1)
    best = int(accepted.argmax())
    length = int(accepted[best])
    return paths[best, : length + 1], int(argmax[paths[best, length]])


def naive_sample(tokens, logits, paths, temperature, uniforms):
    """Softmax of every row, then the walk over the paths in Python (EAGLE's sampling loop)."""
    probs = torch.softmax(logits[0] / temperature, -1)
    node, emitted = 0, [0]
    while True:
        p = probs[node].clone()
        children = sorted({int(x) for x in paths[:, len(emitted)][paths[:, len(emitted) - 1] == node] if x >= 0}) \
            if len(emitted) < paths.shape[1] else []
        accepted = None
        for child in children:
            x = int(tokens[0, child])
            if float(uniforms[0, child]) < float(p[x] / p.sum()):
                accepted = child
                break
            p[x] = 0
        if accepted is None:
            return emitted, int(torch.multinomial(p / p.sum(), 1))
        emitted.append(accepted)
        node = accepted


def bench_point(t, vocab, repeats):
    tokens, parents = eagle_like_tree(t, seed=t)
    logits = torch.randn(1, t, vocab)
    for c in range(1, t):  # make the target agree with the draft about half the time
        if c % 2:
            logits[0, parents[0, c], tokens[0, c]] += 20
    paths = leaf_paths(parents)
    uniforms = torch.rand(1, t + 1)
    times = time_interleaved({
        "greedy": lambda: ops.tree_verify_greedy(tokens, parents, logits),
        "naive_greedy": lambda: naive_greedy(tokens, logits, paths),
        "sample": lambda: ops.tree_verify_sample(tokens, parents, logits, 1.0, uniforms=uniforms),
        "naive_sample": lambda: naive_sample(tokens, logits, paths, 1.0, uniforms),
    }, repeats=repeats)
    return {"T": t, "V": vocab, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
            "greedy_speedup": times["naive_greedy"] / times["greedy"],
            "sample_speedup": times["naive_sample"] / times["sample"],
            "accept_len": int(ops.tree_verify_greedy(tokens, parents, logits)[1][0])}


def run(args):
    info = machine_info(torch.device("cpu"))
    print(f"# tree verification, {info['threads']} threads (B = 1)")
    points = [(64, 49152)] if args.quick else [(t, v) for v in VOCABS for t in TOKENS]
    rows = [bench_point(t, v, args.repeats) for t, v in points]
    print_table(rows, [("T", "T", "{}"), ("V", "V", "{}"), ("accept_len", "accepted", "{}"),
                       ("greedy_ms", "ours greedy ms", "{:.3f}"), ("naive_greedy_ms", "naive greedy ms", "{:.3f}"),
                       ("greedy_speedup", "x greedy", "{:.1f}"), ("sample_ms", "ours sample ms", "{:.3f}"),
                       ("naive_sample_ms", "naive sample ms", "{:.3f}"), ("sample_speedup", "x sample", "{:.1f}")])
    if args.json:
        write_json(args.json, {"machine": info, "points": rows})
    return 0
