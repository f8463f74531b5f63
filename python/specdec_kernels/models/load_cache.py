"""A loaded model kept in the user's cache folder, ready to run: the next load of the same GGUF file maps it
(safetensors, mmap) instead of parsing the file, converting and prepacking its weights again (docs/design.md 2.4).

An entry is two files in <cache>/specdec-kernels/models/, named by a digest of its key:

    NAME.safetensors   every tensor of the model (canonical buffers and prepacked layouts), and in its metadata
                       the module tree as JSON (`manifest`): classes, buffers, plain attributes, configs
    NAME.json          {"key": the key, "sha256": the digest of NAME.safetensors}

The key holds what the built model depends on: the GGUF file's sha256 (user_cache.file_digest: hashed once per
change of the file), the load options, the CPU path that chose the prepacked layouts, torch's and the library's
versions, a digest of the library's code and FORMAT. An entry is used only when its key equals this one and its
safetensors file still has the digest written beside it (the same remembered digest: the file is hashed again
after any change); anything else (damaged, foreign, half-written) is built again and overwritten, never trusted.
Module classes are restored only from this package (and torch.nn's containers), through nn.Module's own
bookkeeping: no constructor and no pickle runs.
"""
import dataclasses
import glob
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from specdec_kernels.user_cache import RACY_NS, cache_dir, file_digest, key_digest, write_atomic

FORMAT = 1  # the entry's layout; a change to what a prepacked layer holds moves the code digest
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDING_SOURCES = ("models/*.py", "quant/*.py", "ops.py", "reference.py", "tree.py")  # what model_from runs
TORCH_CLASSES = ("torch.nn.modules.container",)  # ModuleList, Sequential: the containers the runner uses
MODULE_BOOKKEEPING = frozenset(vars(nn.Module()))  # what nn.Module.__init__ makes: rebuilt, not stored
HOOKS = tuple(name for name in MODULE_BOOKKEEPING if name.endswith("hooks"))
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
ALIGNMENT = 64  # bytes: a cache line, as torch aligns its own allocations
PADDING = "padding."  # the gap fillers' names (the manifest names tensors t0, t1, ...)


def code_digest() -> str:
    """A digest of the sources that build a model (BUILDING_SOURCES) and the compiled extension's identity: a
    checkout whose loader or layers changed (without a version bump) does not read an entry the old code built."""
    from specdec_kernels import _C

    stat = os.stat(_C.__file__)
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())  # the extension's build
    for path in sorted(p for pattern in BUILDING_SOURCES for p in glob.glob(os.path.join(PACKAGE, pattern))):
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, PACKAGE).encode() + b"\0" + f.read())
    return digest.hexdigest()[:24]


def model_key(path: str, options: dict) -> dict:
    from specdec_kernels import _C, __version__

    return {"format": FORMAT, "file": file_digest(path), "options": options, "isa": _C.cpu_isa(),
            "torch": torch.__version__, "version": __version__, "code": code_digest()}


def cached_model(path: str, build: Callable[[], nn.Module], **options) -> nn.Module:
    """The model built from `path` with `options`: read from its cache entry, or built (build()) and stored."""
    try:
        key = model_key(path, options)
    except OSError:
        return build()  # no such file, a directory: the loader says what is wrong with it
    entry = os.path.join(cache_dir("models"), key_digest(key))
    model = read_entry(entry, key)
    if model is None:
        model = build()
        try:
            write_entry(entry, key, model)
        except (OSError, TypeError, ValueError, RuntimeError) as err:  # a full disk, a module it cannot hold
            # (or a tensor safetensors refuses): the model loads all the same, uncached
            print(f"specdec: the loaded model is not cached ({err})", file=sys.stderr)
    return model


# ---------------------------------------------------------------- entries
def write_entry(entry: str, key: dict, model: nn.Module) -> None:
    """Store `model` (just built: its KV cache empty) under `entry`."""
    tensors = {}
    manifest = json.dumps(encode(model, tensors))
    named = {name: tensor.contiguous() for name, tensor in tensors.values()}

    def write(temporary):
        save_aligned_safetensors(named, temporary, {"manifest": manifest})
        # dated before the digest is taken, so that it is reused at once: any later write sets a newer mtime
        # (user_cache: otherwise a file hashed within RACY_NS of its mtime is hashed again)
        past = time.time_ns() - RACY_NS - 1
        os.utime(temporary, ns=(past, past))

    write_atomic(entry + ".safetensors", write)
    index = {"key": key, "sha256": file_digest(entry + ".safetensors")}
    write_atomic(entry + ".json", lambda temporary: _write_json(temporary, index))
    remove_superseded(entry, key)


def remove_superseded(entry: str, key: dict) -> None:
    """Remove the entries of the same file and options that another build made (older code, another CPU path or
    version): a checkout whose code changes often would otherwise gather a model-sized entry per change."""
    for index_path in glob.glob(os.path.join(os.path.dirname(entry), "*.json")):
        other = index_path[: -len(".json")]
        if other == entry:
            continue
        try:
            with open(index_path) as f:
                other_key = json.load(f)["key"]
            if (other_key["file"], other_key["options"]) != (key["file"], key["options"]):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged: nothing can use it
        for path in (index_path, other + ".safetensors"):
            if os.path.exists(path):
                os.remove(path)


def read_entry(entry: str, key: dict):
    """The model stored under `entry`, or None when there is none or it is not this key's, intact."""
    try:
        with open(entry + ".json") as f:
            index = json.load(f)
        if index["key"] != key or file_digest(entry + ".safetensors") != index["sha256"]:
            return None
        tensors, metadata = map_safetensors(entry + ".safetensors")
        return decode(json.loads(metadata["manifest"]), tensors)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError, RuntimeError):
        return None


def save_aligned_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    """A safetensors file whose every tensor starts ALIGNMENT bytes into a page: the header is padded with spaces
    and unused uint8 tensors (PADDING names) fill the gaps, both as the format allows. Mapped, each tensor is then
    as aligned as a fresh allocation, which matters for bits, not only speed: BLAS kernels (torch.mv in
    quant.RowwiseLinear) may sum in an order that depends on their operand's address."""
    header, pieces, offset = {"__metadata__": metadata}, [], 0
    for i, (name, tensor) in enumerate(sorted(tensors.items())):
        gap = -offset % ALIGNMENT
        if gap:
            header[f"{PADDING}{i}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            pieces.append(bytes(gap))
            offset += gap
        data = tensor.reshape(-1).view(torch.uint8).numpy()
        header[name] = {"dtype": SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        pieces.append(data)
        offset += data.nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-(8 + len(encoded)) % ALIGNMENT)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for piece in pieces:
            f.write(piece)


def map_safetensors(path: str):
    """-> ({name: tensor}, metadata) of a safetensors file, every tensor a view of one private mmap of it.
    (safetensors' safe_open maps a storage slice per tensor: ~0.3 s for a model's 800 tensors, this ~10 ms.)
    Layout: u64 header length | JSON header {name: {dtype, shape, data_offsets}, "__metadata__"} | data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(path, False, size))[8 + header_len:]
    metadata = header.pop("__metadata__", {})
    tensors = {name: data[info["data_offsets"][0]:info["data_offsets"][1]].view(SAFETENSORS_DTYPES[info["dtype"]])
               .view(info["shape"]) for name, info in header.items() if not name.startswith(PADDING)}
    return tensors, metadata


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


# ---------------------------------------------------------------- the module tree as JSON + named tensors
def encode(value, tensors: dict):
    """`value` as JSON; each tensor goes into `tensors` ({id: (name, tensor)}) once, however often it is met."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        name, _ = tensors.setdefault(id(value), (f"t{len(tensors)}", value.detach()))
        return {"tensor": name}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode(v, tensors) for v in value]}
    if isinstance(value, nn.Module):
        return {"module": encode_module(value, tensors)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name), tensors) for f in dataclasses.fields(value)}
        return {"dataclass": [class_name(value), fields]}
    raise TypeError(f"cannot cache a {type(value).__name__}")


def encode_module(module: nn.Module, tensors: dict) -> dict:
    if any(getattr(module, hooks) for hooks in HOOKS):
        raise TypeError(f"cannot cache a {type(module).__name__} with hooks")
    runtime = kv_cache_attributes(module)
    attributes = {k: v for k, v in vars(module).items() if k not in MODULE_BOOKKEEPING and k not in runtime}
    node = {"class": class_name(module), "training": module.training,
            "buffers": {k: encode(v, tensors) for k, v in module._buffers.items()},
            "non_persistent": sorted(module._non_persistent_buffers_set),
            "parameters": {k: None if p is None else [encode(p.data, tensors), p.requires_grad]
                           for k, p in module._parameters.items()},
            "modules": {k: encode(m, tensors) for k, m in module._modules.items()},
            "attributes": {k: encode(v, tensors) for k, v in attributes.items()}}
    if runtime:
        node["setup_cache"] = [int(module.cache_lens.shape[0]), module.max_seq_len]
    return node


def kv_cache_attributes(module: nn.Module) -> set:
    """The attributes a model's setup_cache makes (KV cache, RoPE tables, their views): made again after
    loading, not stored. Found by making them again and seeing which attributes it replaced."""
    if not hasattr(module, "setup_cache"):
        return set()
    before = dict(vars(module))
    module.setup_cache(int(module.cache_lens.shape[0]), module.max_seq_len)
    return {k for k, v in vars(module).items() if before.get(k) is not v}


def decode(value, tensors: dict):
    if not isinstance(value, dict):
        return value
    (kind, content), = value.items()
    if kind == "tensor":
        return tensors[content]
    if kind in ("tuple", "list"):
        items = [decode(v, tensors) for v in content]
        return tuple(items) if kind == "tuple" else items
    if kind == "module":
        return decode_module(content, tensors)
    if kind == "dataclass":
        cls = find_class(content[0])
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{content[0]} is not a dataclass")
        return cls(**{k: decode(v, tensors) for k, v in content[1].items()})
    raise ValueError(f"unknown entry {kind!r}")


def decode_module(node: dict, tensors: dict) -> nn.Module:
    cls = find_class(node["class"])
    if not issubclass(cls, nn.Module):
        raise TypeError(f"{node['class']} is not a module")
    module = cls.__new__(cls)
    nn.Module.__init__(module)  # bookkeeping only: the class's own __init__ (which would prepack) is not run
    module.training = node["training"]
    module._buffers.update({k: decode(v, tensors) for k, v in node["buffers"].items()})
    module._non_persistent_buffers_set.update(node["non_persistent"])
    module._parameters.update({k: None if p is None else nn.Parameter(decode(p[0], tensors), requires_grad=p[1])
                               for k, p in node["parameters"].items()})
    module._modules.update({k: decode(v, tensors) for k, v in node["modules"].items()})
    vars(module).update({k: decode(v, tensors) for k, v in node["attributes"].items()})
    if "setup_cache" in node:
        module.setup_cache(*node["setup_cache"])
    return module


def class_name(value) -> str:
    return f"{type(value).__module__}:{type(value).__qualname__}"


def find_class(name: str) -> type:
    """A class of this package (or a torch.nn container) by module:qualname; anything else is a ValueError."""
    module_name, _, qualname = name.partition(":")
    if not (module_name.startswith("specdec_kernels.") or module_name in TORCH_CLASSES) or "." in qualname:
        raise ValueError(f"{name} is not a class the model cache restores")
    cls = getattr(importlib.import_module(module_name), qualname)
    if not isinstance(cls, type):
        raise TypeError(f"{name} is not a class")
    return cls
