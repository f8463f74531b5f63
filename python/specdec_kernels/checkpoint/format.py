"""The fields of a `specdec_w4a16` checkpoint (docs/checkpoint.md) and their checks. A converted linear at module
path P stores P.qweight (uint8 [N, K/2], two 4-bit codes a byte, the even k in the low nibble), P.scales and
P.mins ([N, K/G], one float dtype) and P.bias if it has one: W[n, k] = scales[n, k // G] * q[n, k] +
mins[n, k // G], exactly quant.QuantizedWeight. Every other tensor is a float under its transformers name."""
import torch

from specdec_kernels.quant import GROUP_SIZES, QuantizedWeight, dequantize

QUANT_METHOD = "specdec_w4a16"
FORMAT_VERSION = 1
QUANTIZED_FIELDS = ("qweight", "scales", "mins")
SCALE_DTYPES = ("float32", "float16", "bfloat16")


def quantization_config(group_size: int, modules_not_converted=("lm_head",)) -> dict:
    """config.json's quantization_config of a checkpoint whose converted linears use groups of group_size."""
    return {"quant_method": QUANT_METHOD, "version": FORMAT_VERSION, "bits": 4, "group_size": group_size,
            "modules_not_converted": list(modules_not_converted)}


def check_quantization_config(config) -> int:
    """A ValueError naming the first field that is missing or wrong; -> the group size."""
    if not isinstance(config, dict):
        raise ValueError(f"quantization_config must be an object, got {type(config).__name__}")
    expected = {"quant_method": QUANT_METHOD, "version": FORMAT_VERSION, "bits": 4}
    for name, value in expected.items():
        if name not in config:
            raise ValueError(f"quantization_config has no {name!r}")
        if config[name] != value or type(config[name]) is not type(value):
            raise ValueError(f"quantization_config.{name} must be {value!r}, got {config[name]!r}")
    group_size = config.get("group_size")
    if type(group_size) is not int or group_size not in GROUP_SIZES:
        raise ValueError(f"quantization_config.group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    skipped = config.get("modules_not_converted", [])
    if not isinstance(skipped, list) or not all(isinstance(name, str) for name in skipped):
        raise ValueError(f"quantization_config.modules_not_converted must be a list of module names, got {skipped!r}")
    return group_size


def quantized_tensors(prefix: str, qw: QuantizedWeight) -> dict:
    """The tensors that store the linear `prefix`."""
    return {f"{prefix}.{field}": getattr(qw, field).contiguous() for field in QUANTIZED_FIELDS}


def quantized_weight(tensors, prefix: str, group_size: int) -> QuantizedWeight:
    """The linear `prefix` read back from its tensors (a mapping by name), each checked against the others (a
    ValueError names it; the caller checks [out, in] against the model's)."""
    names = {field: f"{prefix}.{field}" for field in QUANTIZED_FIELDS}
    for name in names.values():
        if name not in tensors:
            raise ValueError(f"tensor {name} is missing from the checkpoint")
    qweight, scales, mins = (tensors[names[field]] for field in QUANTIZED_FIELDS)
    n, k = qweight.shape[0], 2 * qweight.shape[-1]
    if qweight.dim() != 2 or k % group_size or qweight.dtype != torch.uint8:
        raise ValueError(f"{names['qweight']} must be uint8 [N, K/2] with K a multiple of {group_size}, got "
                         f"{qweight.dtype} {list(qweight.shape)}")
    for name, t in ((names["scales"], scales), (names["mins"], mins)):
        if tuple(t.shape) != (n, k // group_size) or str(t.dtype).removeprefix("torch.") not in SCALE_DTYPES:
            raise ValueError(f"{name} must be {[n, k // group_size]} in one of {SCALE_DTYPES}, got {t.dtype} "
                             f"{list(t.shape)}")
    if scales.dtype != mins.dtype:
        raise ValueError(f"{names['scales']} and {names['mins']} must share a dtype, got {scales.dtype} and {mins.dtype}")
    return QuantizedWeight(qweight, scales, mins, group_size)


def dequantized(tensors: dict, group_size: int) -> dict:
    """A checkpoint's tensors with every converted linear's codes, scales and mins replaced by its float32 weight
    (the same model as an ordinary float checkpoint: baselines, and transformers' classes as a reference)."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            prefix = name.removesuffix(".qweight")
            out[f"{prefix}.weight"] = dequantize(quantized_weight(tensors, prefix, group_size))
        elif not name.endswith((".scales", ".mins")):
            out[name] = t
    return out
