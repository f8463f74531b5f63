"""The lean Llama-family runner on the specdec ops."""
import os

from ..quant import set_x_digits
from .gguf_loader import embedded_model_path, load_gguf
from .hf_loader import load_hf
from .llama import ModelConfig, Transformer
from .subset import layer_subset

# Activation digits of the runner's GEMMs on the CPU integer paths (ops.w4a16_gemm). Two, not the op's
# three: 2/3 of the integer work for the same argmax almost everywhere; one digit changes too many argmaxes
# (docs/notes.md, "activation digits").
RUNNER_X_DIGITS = 2


def load_model(path: str, x_digits: int = RUNNER_X_DIGITS, **kwargs) -> Transformer:
    """A GGUF file (load_gguf) or a Hugging Face checkpoint directory (load_hf, RTN-quantized by default), its
    GEMMs set to x_digits activation digits."""
    model = load_hf(path, **kwargs) if os.path.isdir(path) else load_gguf(path, **kwargs)
    return set_x_digits(model, x_digits)


__all__ = ["RUNNER_X_DIGITS", "ModelConfig", "Transformer", "embedded_model_path", "layer_subset", "load_gguf",
           "load_hf", "load_model"]
