"""The `specdec` console script: `specdec generate ...` and `specdec bench <name> ...`.

Each subcommand lives in its own module exposing add_arguments(parser) and run(args); they are
imported only when used, so `specdec bench w4a16` never pays for transformers.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "generate": "specdec_kernels.cli.generate",
}
BENCHES = {
    "w4a16": "specdec_kernels.bench.w4a16",
    "tree-attention": "specdec_kernels.bench.tree_attention",
    "verify": "specdec_kernels.bench.verify",
    "forward": "specdec_kernels.bench.forward",
    "e2e": "specdec_kernels.bench.e2e",
    "gpu-tree": "specdec_kernels.bench.gpu_tree",  # CUDA and Triton tree ops on a GPU
    "triton-compile": "specdec_kernels.bench.triton_compile",  # compile the Triton kernels for sm_80/90, no GPU
}


def _add(subparsers, name: str, module_name: str):
    module = importlib.import_module(module_name)
    parser = subparsers.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="specdec", description="Speculative decoding kernels for 4-bit LLMs")
    commands = parser.add_subparsers(dest="command", required=True)
    # Import only the module the command line names (each may pull in heavy dependencies).
    wanted = argv[1] if len(argv) > 1 and argv[0] == "bench" else (argv[0] if argv else None)
    for name, module_name in COMMANDS.items():
        if name == wanted or wanted is None:
            _add(commands, name, module_name)
    bench = commands.add_parser("bench", help="kernel and end-to-end benchmarks").add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        if name == wanted or wanted is None:
            _add(bench, name, module_name)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
