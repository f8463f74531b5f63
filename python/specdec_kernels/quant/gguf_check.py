"""Check a GGUF file's header against the file's size before any reader trusts it.

A truncated, damaged or crafted file is a ValueError naming the file and the fault. The header is walked a
few bytes at a time through a read-only memory map, and every count and length is held against the bytes
left, so an absurd count (2^62 tensors, a 2^63-byte string) fails at once: nothing is allocated from it and
no loop runs longer than the file allows. Tensor data is never read.

Layout (little-endian, versions 2 and 3; a string is a u64 length and that many UTF-8 bytes):

    "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x     key string | value_type u32 | value          (an array: item_type u32 | count u64 | items)
    tensor_count x name string | n_dims u32 | dims u64 x n_dims (innermost first) | type u32 | offset u64
    padding to general.alignment (default 32) | data: each tensor at data start + offset, offset aligned
"""
import mmap
import os
import struct

from specdec_kernels.extras import optional_imports

with optional_imports():
    import gguf
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUFValueType

SUPPORTED_VERSIONS = (2, 3)  # version 1 had 32-bit counts
SCALAR_SIZES = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2,
                GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
                GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}
BLOCK_FACTS = {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()}  # type id -> (block elements, block bytes)
MAX_DIMS = 4           # ggml's GGML_MAX_DIMS
MAX_NAME_BYTES = 63    # ggml's GGML_MAX_NAME, less its terminating zero
MAX_KEY_BYTES = 65535  # the GGUF specification's limit on a key
# The fewest bytes one entry can take: a bound on how many the rest of the file can hold.
MIN_KV_BYTES = 8 + 4 + 1              # an empty key, the type, a one-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # an empty name, n_dims 0, the type, the offset


class HeaderWalk:
    """The header read in order; every read is checked against the file's size first."""

    def __init__(self, path: str, buffer, size: int):
        self.path, self.buffer, self.size, self.pos = path, buffer, size, 0

    def fail(self, fault: str) -> ValueError:
        return ValueError(f"{self.path} is not a readable GGUF file: {fault}")

    def skip(self, n_bytes: int, what: str) -> int:
        """Step over n_bytes; -> where they start."""
        if n_bytes > self.size - self.pos:
            raise self.fail(f"truncated: {what} needs {n_bytes} bytes at offset {self.pos}, the file has "
                            f"{self.size} bytes")
        self.pos += n_bytes
        return self.pos - n_bytes

    def read(self, n_bytes: int, what: str) -> bytes:
        start = self.skip(n_bytes, what)
        return self.buffer[start: start + n_bytes]

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack_from(fmt, self.buffer, self.skip(struct.calcsize(fmt), what))[0]

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u64 count of items that take at least min_item_bytes each: no more than the rest of the file holds."""
        n = self.unpack("<Q", what)
        if n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what} {n} does not fit in the {self.size - self.pos} bytes left")
        return n

    def string(self, what: str, max_bytes: int) -> str:
        n = self.unpack("<Q", f"{what}'s length")
        if n > max_bytes:
            raise self.fail(f"{what} is {n} bytes long, the limit is {max_bytes}")
        try:
            return self.read(n, what).decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.fail(f"{what} at offset {self.pos - n} is not UTF-8") from err

    def new_name(self, kind: str, max_bytes: int, seen: set) -> str:
        """A key or tensor name, added to `seen`; it must not be there yet (the reader keeps one of each)."""
        name = self.string(f"a {kind}", max_bytes)
        if name in seen:
            raise self.fail(f"{kind} {name} appears twice")
        seen.add(name)
        return name

    def skip_value(self, value_type: int, key: str) -> None:
        if value_type in SCALAR_SIZES:
            self.skip(SCALAR_SIZES[value_type], f"the value of {key}")
        elif value_type == GGUFValueType.STRING:
            self.skip(self.count(f"the length of {key}", 1), f"the value of {key}")
        elif value_type == GGUFValueType.ARRAY:
            item_type = self.unpack("<I", f"the item type of {key}")
            if item_type in SCALAR_SIZES:
                item_bytes = SCALAR_SIZES[item_type]
                self.skip(self.count(f"{key}'s item count", item_bytes) * item_bytes, f"the items of {key}")
            elif item_type == GGUFValueType.STRING:
                for i in range(self.count(f"{key}'s item count", 8)):
                    self.skip(self.count(f"the length of {key}[{i}]", 1), f"{key}[{i}]")
            else:  # nested arrays: no model file has them, and ggml does not read them either
                raise self.fail(f"{key}: arrays of item type {item_type} are not supported")
        else:
            raise self.fail(f"{key}: unknown value type {value_type}")


def read_gguf(path: str) -> gguf.GGUFReader:
    """A reader over `path` once its header has passed check_gguf (the reader trusts every count and offset)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    check_gguf(path)
    return gguf.GGUFReader(path)


def check_gguf(path: str) -> tuple:
    """ValueError naming `path` and the fault unless its header is well-formed and every tensor it lists lies,
    aligned, inside the file's data section. Returns the data section's start and the tensors' (name, dims,
    type id, offset): a tensor table without parsing the metadata's values."""
    try:
        size = os.path.getsize(path)
        if size == 0:  # mmap cannot map an empty file
            raise ValueError(f"{path} is not a readable GGUF file: it is empty")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return check_header(HeaderWalk(path, buffer, size))
    except OSError as err:  # unreadable: a directory, no permission
        raise ValueError(f"{path} is not a readable GGUF file: {err.strerror or err}") from err


def check_header(walk: HeaderWalk) -> tuple:
    magic = walk.read(4, "the magic")
    if magic != b"GGUF":
        raise walk.fail(f"not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    version = walk.unpack("<I", "the version")
    if version not in SUPPORTED_VERSIONS:
        byte_swapped = int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS
        raise walk.fail("a big-endian GGUF file is not supported" if byte_swapped else
                        f"GGUF version {version} is not supported (only {', '.join(map(str, SUPPORTED_VERSIONS))})")
    tensor_count = walk.count("tensor count", MIN_TENSOR_INFO_BYTES)
    kv_count = walk.count("key-value count", MIN_KV_BYTES)
    alignment, keys = GGUF_DEFAULT_ALIGNMENT, set()
    for _ in range(kv_count):
        key = walk.new_name("metadata key", MAX_KEY_BYTES, keys)
        value_type = walk.unpack("<I", f"the type of {key}")
        if key == "general.alignment":
            alignment = read_alignment(walk, value_type)
        else:
            walk.skip_value(value_type, key)
    tensors, names = [], set()
    for _ in range(tensor_count):
        name = walk.new_name("tensor name", MAX_NAME_BYTES, names)
        n_dims = walk.unpack("<I", f"tensor {name}'s n_dims")
        if n_dims > MAX_DIMS:
            raise walk.fail(f"tensor {name} has {n_dims} dimensions, at most {MAX_DIMS} are allowed")
        dims = [walk.unpack("<Q", f"tensor {name}'s dimensions") for _ in range(n_dims)]
        type_id = walk.unpack("<I", f"tensor {name}'s type")
        tensors.append((name, dims, type_id, walk.unpack("<Q", f"tensor {name}'s offset")))
    data_start = -(-walk.pos // alignment) * alignment  # the header's end, rounded up to the alignment
    for name, dims, type_id, offset in tensors:
        check_tensor(walk, name, dims, type_id, offset, data_start, alignment)
    return data_start, tensors


def read_alignment(walk: HeaderWalk, value_type: int) -> int:
    """general.alignment: a UINT32 power of two (tensor offsets and the data section are multiples of it)."""
    if value_type != GGUFValueType.UINT32:
        raise walk.fail(f"general.alignment has value type {value_type}, not UINT32 ({int(GGUFValueType.UINT32)})")
    alignment = walk.unpack("<I", "general.alignment")
    if alignment == 0 or alignment & (alignment - 1):
        raise walk.fail(f"general.alignment {alignment} is not a power of two")
    return alignment


def check_tensor(walk: HeaderWalk, name: str, dims: list, type_id: int, offset: int, data_start: int,
                 alignment: int) -> None:
    if type_id not in BLOCK_FACTS:
        raise walk.fail(f"tensor {name} has unknown type id {type_id}")
    block_elements, block_bytes = BLOCK_FACTS[type_id]
    elements = 1
    for d in dims:
        elements *= d  # Python ints: the product is exact, then held to what int64 (numpy, torch) can count
    if elements >= 2 ** 63:
        raise walk.fail(f"tensor {name}: dimensions {dims} hold {elements} elements, more than int64 counts")
    if dims and dims[0] % block_elements:
        raise walk.fail(f"tensor {name}: row length {dims[0]} is not a multiple of its type's block of "
                        f"{block_elements}")
    if offset % alignment:
        raise walk.fail(f"tensor {name}: offset {offset} is not a multiple of the alignment {alignment}")
    end = data_start + offset + elements // block_elements * block_bytes
    if end > walk.size:
        raise walk.fail(f"tensor {name}: offset+size {end} past the end of the file ({walk.size} bytes)")
