"""The command line's argument types (argparse type=) and UsageError: a mistake in what the user typed is one
line naming it and exit status 2, found before any model loads."""
import argparse
import glob
import math
import os


class UsageError(Exception):
    """What the user asked for cannot be done (e.g. no model given and the embedded one is not installed):
    main() prints `specdec: error: <message>` and exits 2, no traceback."""


def _checked(convert, rule: str, ok):
    """An argparse type: convert the text, then require ok(value); the error says `must be <rule>, got <text>`."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


positive_int = _checked(int, "an integer >= 1", lambda v: v >= 1)
non_negative_int = _checked(int, "an integer >= 0", lambda v: v >= 0)
non_negative_float = _checked(float, "a number >= 0", lambda v: math.isfinite(v) and v >= 0)
top_p = _checked(float, "in (0, 1]", lambda v: 0 < v <= 1)  # 0 would keep no token at all
# comma-separated token counts, possibly none ('')
token_counts = _checked(lambda text: [int(t) for t in text.split(",") if t.strip()], "integers >= 1, comma-separated",
                        lambda v: all(t >= 1 for t in v))


def readable_file(text: str) -> str:
    """An existing, readable file (an EAGLE head, a prompt set), as an absolute path."""
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot read it (permission denied)")
    return path


def head_path(text: str) -> str:
    """An EAGLE head: a readable file (EAGLE-1/2) or a folder in the public EAGLE-3 layout, as an absolute path."""
    from specdec_kernels.drafters import is_eagle3_folder

    path = os.path.abspath(os.path.expanduser(text))
    return path if is_eagle3_folder(path) else readable_file(text)


def model_path(text: str) -> str:
    """A GGUF file or a Hugging Face checkpoint directory, checked before any loader runs (transformers would
    take a missing path for a hub repo id), as an absolute path (transformers reads a bare file name's empty
    directory as a repo id too)."""
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot read it (permission denied)")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")) or not glob.glob(os.path.join(path, "*.safetensors")):
            raise argparse.ArgumentTypeError(f"{text}: a directory but not a Hugging Face checkpoint "
                                             "(needs config.json and *.safetensors)")
        return path
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{text}: cannot read it ({err.strerror})") from None
    if magic != b"GGUF":
        raise argparse.ArgumentTypeError(f"{text}: not a GGUF file (and not a checkpoint directory)")
    return path


def default_model_path() -> str:
    """The embedded model, for commands run without --model."""
    from specdec_kernels.models import embedded_model_path

    try:
        return embedded_model_path()
    except FileNotFoundError as err:
        raise UsageError(f"no --model given, and {err}") from None


def add_draft_arguments(parser) -> None:
    """The files and settings of the drafting methods (methods.Decoder): `specdec generate` and `bench e2e`."""
    from specdec_kernels.hierarchical import MIN_DRAFT

    parser.add_argument("--head", type=head_path, help="EAGLE head: a file, or an EAGLE-3 folder for eagle3 and auto "
                        "(default: the ones shipped for the model, drafters/heads/NAME.eagle.safetensors and NAME.eagle3/)")
    parser.add_argument("--predictor", type=readable_file, help="draft length predictor of ada, eagle2-ada and ada-pld "
                        "(default: the one shipped for the model, heads/NAME.ldlp.safetensors)")
    parser.add_argument("--intermediate", type=readable_file, help="hier's intermediate: a GGUF file with the model's "
                        "tokenizer (default: derived from the model as heads/NAME.intermediate.json says)")
    parser.add_argument("--min-draft", type=positive_int, default=MIN_DRAFT, help="hier: sequence draft tokens per "
                        "target step, at least")
    parser.add_argument("--recalibrate", action="store_true", help="auto: measure this machine's step costs again "
                        "(they are cached per machine, model and head)")
