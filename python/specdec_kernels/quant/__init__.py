"""Quantized weights: the canonical 4-bit form (formats), exact importers from GGUF, GPTQ and AWQ (importers),
and the packed linear layers that run on the specdec ops (layers)."""
from .formats import GROUP_SIZES, QuantizedWeight, dequantize, quantize_rtn
from .importers import from_awq, from_gguf, from_gptq
from .layers import (
                     PackedLayer,
                     RowwiseLinear,
                     SumOfLinears,
                     W4A16Linear,
                     W8A16Linear,
                     dense_linear,
                     dense_weight,
                     layout_changes,
                     set_x_digits,
)

__all__ = ["GROUP_SIZES", "PackedLayer", "QuantizedWeight", "RowwiseLinear", "SumOfLinears", "W4A16Linear",
           "W8A16Linear", "dense_linear", "dense_weight", "dequantize", "from_awq", "from_gguf", "from_gptq",
           "layout_changes", "quantize_rtn", "set_x_digits"]
