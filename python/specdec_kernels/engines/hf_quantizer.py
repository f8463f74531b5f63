"""A transformers quantizer for specdec_w4a16 checkpoints (docs/checkpoint.md): `from_pretrained(folder)`
builds the model with each converted nn.Linear as a quant.W4A16Linear (4-bit weights, multiplied by our
kernel).

transformers learns of the method only when told, so that `import specdec_kernels` never imports it:

    from specdec_kernels.engines.hf_quantizer import register
    register()
    model = AutoModelForCausalLM.from_pretrained(folder)

The checks of the config and of the stored tensors are checkpoint.format's, run on the files' headers before
transformers loads anything.
"""
import torch
from torch import nn

from specdec_kernels.checkpoint.format import QUANT_METHOD, check_quantization_config, quantized_weight
from specdec_kernels.extras import optional_imports
from specdec_kernels.quant import QuantizedWeight, W4A16Linear

with optional_imports():
    from transformers.modeling_utils import load_state_dict
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
        register_quantization_config,
        register_quantizer,
    )
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module
    from transformers.utils.quantization_config import QuantizationConfigMixin


class SpecdecW4A16Config(QuantizationConfigMixin):
    """config.json's quantization_config: SpecdecW4A16Config(**checkpoint.format.quantization_config(G)); a
    field missing or outside the format is a ValueError naming it."""

    def __init__(self, **fields):
        self.group_size = check_quantization_config(fields)
        self.quant_method, self.version, self.bits = fields["quant_method"], fields["version"], fields["bits"]
        self.modules_not_converted = fields.get("modules_not_converted", [])


class SpecdecW4A16Quantizer(HfQuantizer):
    """Loads specdec_w4a16 checkpoints as they are stored; requires_calibration has transformers refuse to
    quantize a float checkpoint with it."""

    requires_calibration = True

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        stored = _stored_tensors(checkpoint_files)
        config = self.quantization_config
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and should_convert_module(name, config.modules_not_converted):
                model.set_submodule(name, _LoadingSlot(name, module, config.group_size, stored))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, module in list(model.named_modules()):
            if isinstance(module, _LoadingSlot):
                model.set_submodule(name, module.as_linear())
        return model

    def is_serializable(self):
        return True  # W4A16Linear's state dict is the stored form

    @property
    def is_trainable(self):
        return False


class _LoadingSlot(nn.Module):
    """A converted linear while transformers loads it: buffers with the names, shapes and dtypes its stored
    tensors were checked to have, so they load as they are; as_linear makes the W4A16Linear once they are
    in."""

    def __init__(self, name: str, linear: nn.Linear, group_size: int, stored: dict):
        super().__init__()
        stored_form = _check_stored_layer(stored, name, linear, group_size)
        self.group_size = group_size
        device = linear.weight.device
        for field in ("qweight", "scales", "mins"):
            self.register_buffer(field, torch.empty_like(getattr(stored_form, field), device=device))
        self.register_buffer("bias", None if linear.bias is None else torch.empty_like(linear.bias))

    def as_linear(self) -> W4A16Linear:
        qw = QuantizedWeight(self.qweight, self.scales, self.mins, self.group_size)
        return W4A16Linear.from_quantized(qw, self.bias)


def _stored_tensors(checkpoint_files) -> dict:
    """Every tensor of the checkpoint as an empty meta tensor of its stored dtype and shape (read from the
    files' headers)."""
    if not checkpoint_files:
        raise ValueError(f"{QUANT_METHOD} loads from checkpoint files, got none")
    stored = {}
    for path in checkpoint_files:
        stored.update(load_state_dict(path, map_location="meta"))
    return stored


def _check_stored_layer(stored: dict, name: str, linear: nn.Linear, group_size: int) -> QuantizedWeight:
    """The stored form (meta tensors) of the converted linear `name`, checked against the format and the
    layer: a ValueError naming the tensor otherwise, before loading (transformers would report a wrong shape
    as an error of its own and load a missing tensor as uninitialized memory)."""
    n, k = linear.out_features, linear.in_features
    if k % group_size:
        raise ValueError(f"{name}: in_features = {k} is not a multiple of quantization_config.group_size"
                         f" = {group_size}")
    qw = quantized_weight(stored, name, group_size)
    if qw.shape != (n, k):
        raise ValueError(f"{name}.qweight must be [{n}, {k // 2}] for the model's [{n}, {k}] layer, got "
                         f"{list(qw.qweight.shape)}")
    bias = stored.get(f"{name}.bias")
    if linear.bias is not None and (bias is None or tuple(bias.shape) != (n,)):
        got = "nothing" if bias is None else list(bias.shape)
        raise ValueError(f"{name}.bias must be stored as [{n}], got {got}")
    return qw


def register() -> None:
    """Tells transformers of the specdec_w4a16 method (again: a no-op); call before from_pretrained."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(SpecdecW4A16Config)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(SpecdecW4A16Quantizer)
