"""The planner's view of this machine: specdec plan [--model PATH] [--head PATH] [--recalibrate] [--plot PNG]

Prints the step costs the `auto` method plans with (measured once per machine, model and head, then cached):
the target's forward over T nodes against T = 1, the drafter's costs, and the draft the planner would verify
for a drafter whose top token is accepted with probability p at every depth (a chain of p, p^2, ...), and the
draft length `ada` gives each bin of its length predictor's output under these costs (drafters.ldlp).
"""
from specdec_kernels.cli.args import UsageError, default_model_path, head_path, model_path

ACCEPTANCE = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def add_arguments(parser):
    parser.add_argument("--model", type=model_path, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--head", type=head_path, help="EAGLE head, file or EAGLE-3 folder (default: the one "
                        "auto uses for the model)")
    parser.add_argument("--recalibrate", action="store_true", help="measure again (the cached costs are replaced)")
    parser.add_argument("--plot", help="write the forward cost curve c(T) / c(1) as a PNG here")


def chain_choice(costs, p: float) -> int:
    """Draft tokens the planner verifies, at plain decoding's rate, for a chain accepted with p per token."""
    from specdec_kernels.planner import best_size

    depth = costs.max_nodes - 1
    nodes, _ = best_size([p ** (d + 1) for d in range(depth)], depth, costs, 1 / costs.step_ms(1, 0))
    return nodes - 1


def run(args):
    import torch

    from specdec_kernels.bench.common import machine_info, print_table
    from specdec_kernels.methods import Decoder

    decoder = Decoder(args.model or default_model_path(), head_path=args.head, recalibrate=args.recalibrate)
    if decoder.planned_head is None:
        raise UsageError(f"no EAGLE head for {decoder.model_path}: pass --head")
    costs = decoder.planner.costs
    info = machine_info(torch.device("cpu"))
    print(f"# step costs of {decoder.model_path}, CPU path {info['cpu_isa']}, {info['threads']} threads: drafter "
          f"extend {costs.extend_ms:.2f} ms, one tree level {costs.level_ms:.2f} ms")
    base = costs.forward_ms[0]
    print_table([{"T": t, "ms": ms, "ratio": ms / base} for t, ms in enumerate(costs.forward_ms, start=1)],
                [("T", "T", "{}"), ("ms", "forward ms", "{:.2f}"), ("ratio", "x T=1", "{:.2f}")])
    print("\n# the chain the planner verifies when each draft token is accepted with probability p")
    print_table([{"p": p, "tokens": chain_choice(costs, p)} for p in ACCEPTANCE],
                [("p", "p", "{:.2f}"), ("tokens", "draft tokens", "{}")])
    if decoder.predictor_path is not None and decoder.planned_head == decoder.head_path:
        print_ada_lengths(decoder.predictor)
    if args.plot:
        plot(costs, args.plot, f"{info['cpu_isa']}, {info['threads']} threads")


def print_ada_lengths(predictor):
    from specdec_kernels.bench.common import print_table

    table = predictor.length_table
    if table is None:
        print("\n# ada: the predictor has no length table, its lengths are rounded")
        return
    print("\n# ada: the draft length of each bin of the predictor's output, under these costs")
    bounds = [float("-inf"), *table.edges, float("inf")]
    print_table([{"raw": f"[{bounds[b]:.2f}, {bounds[b + 1]:.2f})", "positions": sum(row),
                  "mean": sum(a * n for a, n in enumerate(row)) / sum(row), "length": predictor.bin_lengths[b]}
                 for b, row in enumerate(table.counts)],
                [("raw", "predictor output", "{}"), ("positions", "held-out positions", "{}"),
                 ("mean", "mean accepted", "{:.2f}"), ("length", "draft length", "{}")])


def plot(costs, path: str, machine: str):
    from specdec_kernels.bench.common import pyplot

    plt = pyplot()

    sizes = range(1, costs.max_nodes + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(sizes, [ms / costs.forward_ms[0] for ms in costs.forward_ms], marker="o")
    ax.set(xlabel="nodes verified in one forward (T)", ylabel="forward time / T = 1", title=f"c(T), {machine}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
