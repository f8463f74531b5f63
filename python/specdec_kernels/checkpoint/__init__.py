"""The `specdec_w4a16` checkpoint: a transformers-style folder that carries the runner's 4-bit weights exactly
between engines. format: its fields and their checks (the loaders read it); convert: any model the runner loads
-> such a folder (`from specdec_kernels.checkpoint.convert import convert`, or `specdec convert`).
docs/checkpoint.md documents it field by field."""
from .format import FORMAT_VERSION, QUANT_METHOD, check_quantization_config, quantization_config

__all__ = ["FORMAT_VERSION", "QUANT_METHOD", "check_quantization_config", "quantization_config"]
