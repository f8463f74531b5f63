"""The lean Llama-family runner on the specdec ops."""
import os

from .gguf_loader import embedded_model_path, load_gguf
from .hf_loader import load_hf
from .llama import ModelConfig, Transformer


def load_model(path: str, **kwargs) -> Transformer:
    """A GGUF file (load_gguf) or a Hugging Face checkpoint directory (load_hf, RTN-quantized by default)."""
    return load_hf(path, **kwargs) if os.path.isdir(path) else load_gguf(path, **kwargs)


__all__ = ["ModelConfig", "Transformer", "embedded_model_path", "load_gguf", "load_hf", "load_model"]
