"""vLLM runs specdec_w4a16 checkpoints (docs/checkpoint.md) on our W4A16 op.

`register` is the package's `vllm.general_plugins` entry point: vLLM calls it in every process it starts, so
`vllm serve FOLDER` needs no flag. It registers the quantization method `specdec_w4a16`, whose linear layers hold
the checkpoint's 4-bit codes, scales and mins as vLLM parameters (its loaders stack q/k/v and gate/up along the
output rows, as our runner does), prepack them once loaded and multiply with `ops.w4a16_gemm`. Importing this
module needs vLLM (the `[vllm]` extra, in its own environment: `make test-vllm`).
"""
from typing import Any, Optional

import torch

from specdec_kernels import ops
from specdec_kernels.checkpoint.format import QUANT_METHOD, check_quantization_config
from specdec_kernels.extras import optional_imports
from specdec_kernels.models import RUNNER_X_DIGITS

with optional_imports():
    from vllm.model_executor.layers.linear import LinearBase, LinearMethodBase, UnquantizedLinearMethod
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
    from vllm.model_executor.layers.quantization.utils.quant_utils import is_layer_skipped
    from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter


class SpecdecW4A16Config(QuantizationConfig):
    def __init__(self, group_size: int, modules_not_converted: list):
        super().__init__()
        self.group_size, self.modules_not_converted = group_size, modules_not_converted

    @classmethod
    def get_name(cls) -> str:
        return QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list:
        return [torch.float32, torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # a CPU method: no GPU generation to require

    @classmethod
    def get_config_filenames(cls) -> list:
        return []  # the fields live in config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpecdecW4A16Config":
        return cls(check_quantization_config(config), config.get("modules_not_converted", []))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if not isinstance(layer, LinearBase):
            return None  # embeddings and the output layer stay vLLM's own
        if is_layer_skipped(prefix, self.modules_not_converted, self.packed_modules_mapping, match_mode="suffix"):
            return UnquantizedLinearMethod()
        return SpecdecW4A16LinearMethod(self.group_size)


class SpecdecW4A16LinearMethod(LinearMethodBase):
    def __init__(self, group_size: int):
        self.group_size = group_size

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int, output_partition_sizes: list,
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs):
        k, n, g = input_size_per_partition, sum(output_partition_sizes), self.group_size
        if k % g:
            raise ValueError(f"{QUANT_METHOD}: {k} input features per partition are not a multiple of group_size {g}")
        loader = extra_weight_attrs.get("weight_loader")
        # float32 scales and mins hold the checkpoint's float16/bfloat16/float32 ones exactly
        layer.register_parameter("qweight", PackedvLLMParameter(
            data=torch.empty(n, k // 2, dtype=torch.uint8), input_dim=1, output_dim=0, packed_dim=1, packed_factor=2,
            weight_loader=loader))
        for name in ("scales", "mins"):
            layer.register_parameter(name, GroupQuantScaleParameter(
                data=torch.empty(n, k // g, dtype=torch.float32), input_dim=1, output_dim=0, weight_loader=loader))
        layer.out_features = n

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        for name in ("qweight", "scales", "mins"):  # plain tensors from here on: vLLM's graph capture wants them
            setattr(layer, name, torch.nn.Parameter(getattr(layer, name).data, requires_grad=False))
        layer.packed = ops.w4a16_prepack(layer.qweight, layer.scales, layer.mins, self.group_size)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = ops.w4a16_gemm(rows, *layer.packed, self.group_size, layer.out_features, RUNNER_X_DIGITS)
        y = y.view(*x.shape[:-1], layer.out_features)
        return y if bias is None else y + bias.to(y.dtype)


def register() -> None:
    """vLLM's plugin hook (idempotent: vLLM may call it more than once per process)."""
    register_quantization_config(QUANT_METHOD)(SpecdecW4A16Config)
