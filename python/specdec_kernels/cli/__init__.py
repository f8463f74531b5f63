"""The `specdec` console script: `specdec generate ...`, `specdec plan`, `specdec info`, `specdec convert SRC OUT`
and `specdec bench <name> ...`.

Each subcommand lives in its own module exposing add_arguments(parser) and run(args); they are
imported only when used, so `specdec bench w4a16` never pays for transformers.

A mistake in the command line (a missing model file, a negative temperature) is reported as one line naming it,
exit status 2: at parsing, by the argument types of cli/args.py, or later as a UsageError; so is an optional package
the command needs and lacks (a MissingExtra names the extra to install). Ctrl-C exits 130, a closed output pipe 1,
both without a traceback. Anything else keeps its traceback: it is a bug.
"""
import argparse
import importlib
import os
import signal
import sys
import threading

from specdec_kernels.extras import MissingExtra

from .args import UsageError

COMMANDS = {
    "generate": "specdec_kernels.cli.generate",
    "plan": "specdec_kernels.cli.plan",
    "info": "specdec_kernels.cli.info",
    "convert": "specdec_kernels.cli.convert",
}
BENCHES = {
    "w4a16": "specdec_kernels.bench.w4a16",
    "tree-attention": "specdec_kernels.bench.tree_attention",
    "verify": "specdec_kernels.bench.verify",
    "forward": "specdec_kernels.bench.forward",
    "e2e": "specdec_kernels.bench.e2e",
    "transformers": "specdec_kernels.bench.transformers",  # our quantizer and drafts in transformers
    "vllm": "specdec_kernels.bench.vllm",  # in vLLM's environment (make test-vllm sets it up)
    "gpu-tree": "specdec_kernels.bench.gpu_tree",  # CUDA and Triton tree ops on a GPU
    "triton-compile": "specdec_kernels.bench.triton_compile",  # compile the Triton kernels for sm_80/90, no GPU
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line: argparse's usage block above it would bury the problem (--help shows the usage).
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- the command line
def _add(subparsers, name: str, module_name: str, wanted: str):
    if name != wanted:  # listed for --help and typos, not imported
        subparsers.add_parser(name)
        return
    module = importlib.import_module(module_name)
    parser = subparsers.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def _parse(argv):
    parser = _Parser(prog="specdec", description="Speculative decoding kernels for 4-bit LLMs")
    commands = parser.add_subparsers(dest="command", required=True)
    # Import only the module the command line names (each may pull in heavy dependencies).
    wanted = argv[1] if len(argv) > 1 and argv[0] == "bench" else (argv[0] if argv else None)
    for name, module_name in COMMANDS.items():
        _add(commands, name, module_name, wanted)
    bench = commands.add_parser("bench", help="kernel and end-to-end benchmarks").add_subparsers(dest="bench", required=True)
    for name, module_name in BENCHES.items():
        _add(bench, name, module_name, wanted)
    return parser.parse_args(argv)


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: a library that catches it mid-call and raises
    another error (safetensors turns it into a ValueError while a file is read) must not turn an interrupt into
    a traceback. Left alone where Ctrl-C is ignored (a shell's background job) or off the main thread."""

    def __enter__(self):
        self.seen, self.previous = False, None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def _interrupt(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with _Interrupts() as interrupts:
        try:
            args = _parse(argv)
            return args.run(args)
        except (UsageError, MissingExtra) as err:
            print(f"specdec: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return _interrupted()
        except BrokenPipeError:  # whoever read our output stopped (`specdec generate ... | head`): stop quietly
            # stdout still holds unwritten text; point it at /dev/null, or Python's exit flush complains again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except Exception:
            if interrupts.seen:  # Ctrl-C, turned into another error on its way up
                return _interrupted()
            raise


def _interrupted() -> int:
    print("\nspecdec: interrupted", file=sys.stderr)  # the newline: streamed text may have stopped mid-line
    return 130


if __name__ == "__main__":
    sys.exit(main())
