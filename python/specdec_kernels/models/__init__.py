"""The lean Llama-family runner on the specdec ops."""
from .gguf_loader import embedded_model_path, load_gguf
from .llama import ModelConfig, Transformer

__all__ = ["ModelConfig", "Transformer", "embedded_model_path", "load_gguf"]
