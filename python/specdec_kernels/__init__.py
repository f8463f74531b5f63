"""specdec-kernels: kernels and a thin Python layer for lossless speculative decoding of 4-bit LLMs.

    import torch, specdec_kernels as sk
    lin = sk.W4A16Linear.from_linear(torch.nn.Linear(4096, 4096, bias=False), group_size=128)
    y = lin(torch.randn(16, 4096, dtype=torch.bfloat16))     # [16, 4096] bfloat16
"""
import torch  # noqa: F401  (loads libtorch before our extension)

from . import (
    _C,  # noqa: F401  (registers torch.ops.specdec.*)
    ops,
    quant,
    reference,
)
from .quant import QuantizedWeight, W4A16Linear

__all__ = ["ops", "quant", "reference", "QuantizedWeight", "W4A16Linear"]
__version__ = "0.1.0"
