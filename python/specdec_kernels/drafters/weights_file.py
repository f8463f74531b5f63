"""The file of a trained draft part (the EAGLE head, the length predictor): safetensors, whose header carries the
part's config and free-form metadata (the command that trained it) as JSON strings.

Nothing in it is pickled, so reading a file runs no code. Everything read is checked before it builds anything:
a truncated, damaged or crafted file is a ValueError naming it — the safetensors library bounds the header and
every tensor by the file's size; then the config must have exactly the dataclass's fields with values of their
types, and the tensors the names, shapes and dtype that a module built on the meta device (no memory) expects.
"""
import json
import math
import os
import types
import typing
from dataclasses import MISSING, fields

import torch

from specdec_kernels.extras import optional_imports

JSON_KEYS = ("config", "metadata")  # the header's entries, each one JSON object
MAX_SIZE = 2 ** 31  # a config's ints are sizes: below this, so that no size computed from them overflows


def save_weights_file(path: str, tensors: dict, config: dict, metadata: dict) -> None:
    with optional_imports():
        from safetensors.torch import save_file
    save_file({name: t.contiguous() for name, t in tensors.items()}, path,
              metadata={key: json.dumps(value) for key, value in zip(JSON_KEYS, (config, metadata))})


def read_weights_file(path: str) -> tuple:
    """-> (tensors {name: tensor}, config dict, metadata dict) of the file at `path`."""
    with optional_imports():
        from safetensors import SafetensorError, safe_open
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        config, metadata = (json.loads(header[key]) for key in JSON_KEYS)
    except (KeyError, ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise ValueError(f"{path}: the header's {' and '.join(JSON_KEYS)} are missing or not JSON ({err!r})") from err
    if not isinstance(config, dict) or not isinstance(metadata, dict):
        raise ValueError(f"{path}: the header's config and metadata must be JSON objects")
    return tensors, config, metadata


def config_from(cls, values: dict, path: str):
    """cls(**values) for a dataclass config read from `path`: exactly its fields, each value of its field's type
    (ints as ints, floats finite, optional float tuples as lists); ValueError naming the file otherwise."""
    types = typing.get_type_hints(cls)
    required = {f.name for f in fields(cls) if f.default is MISSING}
    if set(values) - set(types) or required - set(values):
        raise ValueError(f"{path}: the config has fields {sorted(values)}, a {cls.__name__} has {sorted(types)}")
    for name, value in values.items():
        if not fits(value, types[name]):
            raise ValueError(f"{path}: config {name} = {value!r} is not of its type {types[name]} (ints in "
                             f"[0, {MAX_SIZE}), floats finite)")
    try:
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})
    except ValueError as err:  # the dataclass's own checks
        raise ValueError(f"{path}: {err}") from err


def fits(value, annotation) -> bool:
    """Whether a JSON value is of a config field's type: int, float, or Optional[Tuple[float, ...]]."""
    if annotation is int:
        return type(value) is int and 0 <= value < MAX_SIZE  # type(): bool, an int subclass, is not a size
    if annotation is float:
        return type(value) in (int, float) and math.isfinite(value)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X], X | None
        return value is None or any(fits(value, arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is tuple:  # Tuple[X, ...]
        return isinstance(value, list) and all(fits(v, typing.get_args(annotation)[0]) for v in value)
    raise TypeError(f"no JSON check for config fields of type {annotation}")


def assign_weights(module: torch.nn.Module, tensors: dict, dtype: torch.dtype, path: str, built=()) -> None:
    """Give `module`, built on the meta device, the file's tensors (as float32) in place of its parameters: the
    same names as its state dict less `built` (the entries made some other way), each of its shape, of `dtype`
    and finite; ValueError naming the file otherwise."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items() if name not in built}
    if set(tensors) != set(expected):
        raise ValueError(f"{path}: tensors {sorted(set(expected) - set(tensors))} are missing, "
                         f"{sorted(set(tensors) - set(expected))} unexpected")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name] or tensor.dtype != dtype:
            raise ValueError(f"{path}: tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, the config needs "
                             f"{dtype} {expected[name]}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: tensor {name} holds NaN or infinite values")
    module.load_state_dict({name: t.float() for name, t in tensors.items()}, strict=False, assign=True)
