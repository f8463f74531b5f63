"""Hostile draft-part files (EAGLE heads, length predictors; intermediate recipes at the end): truncated,
bit-flipped and crafted copies of a good file either load or are a ValueError naming the file — never another
exception or a hang — and a pickle in their place is refused without being run. drafters.weights_file reads
heads and predictors (safetensors, then checks of the config and tensors against a module built on the meta
device)."""
import json
import os
import pathlib
import re
import struct

import pytest
import safetensors.torch
import specdec_kernels
import torch
from hostile import flip_bits, flipped, outcomes, peak_below, time_limit, truncation_lengths
from specdec_kernels.drafters import (
    EagleHead,
    LengthPredictor,
    PredictorConfig,
    load_head,
    load_predictor,
    save_head,
    save_predictor,
)
from specdec_kernels.drafters.weights_file import save_weights_file
from specdec_kernels.intermediate import derive_intermediate


class PartFile:
    """A good file of one draft part, its pieces, and how to load one and use what loaded."""

    def __init__(self, name, path, load, use):
        self.name, self.data, self.load, self.use = name, path.read_bytes(), load, use
        self.tensors = safetensors.torch.load(self.data)
        self.header_end = 8 + struct.unpack_from("<Q", self.data)[0]  # a u64 header length, then the JSON header
        self.header = json.loads(self.data[8: self.header_end])
        self.config, self.metadata = (json.loads(self.header["__metadata__"][key]) for key in ("config", "metadata"))

    def tensor_ends(self) -> list:
        return [self.header_end + entry["data_offsets"][1] for name, entry in self.header.items()
                if name != "__metadata__"]


@pytest.fixture(scope="module", params=["head", "predictor"])
def part(request, tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / f"good.{request.param}"
    x, f = torch.randn(1, 5, tiny.config.dim), torch.randn(1, 5, tiny.config.dim)
    if request.param == "head":
        save_head(EagleHead.from_target(tiny, torch.arange(0, 40, 2)), str(path), command="test")
        return PartFile("head", path, lambda p: load_head(str(p), tiny), lambda head: head(x, f))
    save_predictor(LengthPredictor(PredictorConfig(tiny.config.dim, 3, hidden_dim=32)), str(path), command="test")
    return PartFile("predictor", path, lambda p: load_predictor(str(p), tiny),
                    lambda predictor: predictor.lengths(x, f, x[..., 0]))


# ---------------------------------------------------------------- truncation and bit flips
def test_every_truncation_is_refused(part, tmp_path):
    lengths = truncation_lengths(len(part.data), [8, part.header_end] + part.tensor_ends(), step=211)
    loaded, surprises = outcomes([(f"{n} bytes", part.data[:n]) for n in lengths], tmp_path, part.load, part.use)
    assert len(lengths) > 150 and not loaded and not surprises, (loaded, surprises)


@pytest.mark.parametrize("region", ["header", "data"])
def test_bit_flips_load_or_are_refused(part, tmp_path, region):
    """Dense in the JSON header (sizes, offsets, dtypes, the config), sparse in the weights."""
    start, stop, count = (0, part.header_end, 300) if region == "header" else (part.header_end, len(part.data), 24)
    cases = [(f"bit {bit} (byte {bit // 8})", flipped(part.data, bit)) for bit in flip_bits(14, count, start, stop)]
    loaded, surprises = outcomes(cases, tmp_path, part.load, part.use)
    assert not surprises, surprises
    assert region == "header" or len(loaded) > count // 2


# ---------------------------------------------------------------- crafted files
def safetensors_bytes(header, data: bytes) -> bytes:
    """A file of this header (a dict, or raw bytes as they are) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def with_entry(part: PartFile, name: str, **changes) -> bytes:
    """The good file with one header entry changed (its data untouched)."""
    header = {**part.header, name: {**part.header[name], **changes}}
    return safetensors_bytes(header, part.data[part.header_end:])


def with_metadata(part: PartFile, **entries) -> bytes:
    header = {**part.header, "__metadata__": {**part.header["__metadata__"], **entries}}
    return safetensors_bytes(header, part.data[part.header_end:])


def first_weight(tensors: dict) -> str:
    return min(name for name in tensors if name != "draft_to_target")


# The safetensors layer: bounded by the library before any tensor is made, or by read_weights_file.
CRAFTED_FILES = {
    "header length 2^63": (lambda p: struct.pack("<Q", 2 ** 63) + p.data[8:], "not a readable safetensors file"),
    "header length past the end": (lambda p: struct.pack("<Q", len(p.data)) + p.data[8:],
                                   "not a readable safetensors file"),
    "header length 0": (lambda p: struct.pack("<Q", 0) + p.data[8:], "not a readable safetensors file"),
    "header not JSON": (lambda p: safetensors_bytes(b"}" + p.data[9: p.header_end], p.data[p.header_end:]),
                        "not a readable safetensors file"),
    "header nested 10^5 deep": (lambda p: safetensors_bytes(b"[" * 100_000, b""), "not a readable safetensors file"),
    "unknown dtype": (lambda p: with_entry(p, first_weight(p.tensors), dtype="Q9"), "not a readable safetensors file"),
    "shape overflowing int64": (lambda p: with_entry(p, first_weight(p.tensors), shape=[2 ** 32, 2 ** 32]),
                                "not a readable safetensors file"),
    "offsets past the end": (lambda p: with_entry(p, first_weight(p.tensors), data_offsets=[0, 2 ** 40]),
                             "not a readable safetensors file"),
    "no config": (lambda p: safetensors_bytes({k: v for k, v in p.header.items() if k != "__metadata__"},
                                              p.data[p.header_end:]), "are missing or not JSON"),
    "config not JSON": (lambda p: with_metadata(p, config="{dim: 64"), "are missing or not JSON"),
    "config nested 10^5 deep": (lambda p: with_metadata(p, config="[" * 100_000), "are missing or not JSON"),
    "config a list": (lambda p: with_metadata(p, config="[1, 2]"), "must be JSON objects"),
    "metadata a string": (lambda p: with_metadata(p, metadata='"hello"'), "must be JSON objects"),
}


@pytest.mark.parametrize("label", list(CRAFTED_FILES))
def test_crafted_file_is_refused(part, tmp_path, label):
    case, fault = CRAFTED_FILES[label]
    path = tmp_path / "crafted"
    path.write_bytes(case(part))
    with peak_below(), time_limit(), pytest.raises(ValueError, match=fault) as refusal:
        part.load(path)
    assert str(path) in str(refusal.value)


# The config and the tensors, each as the saver writes them but with wrong values: (changes to (tensors,
# config), the error). Both parts have the config fields dim and hidden_dim.
def changed(mapping: dict, **changes) -> dict:
    """mapping with `changes` applied; a change to None removes the key."""
    return {k: v for k, v in {**mapping, **changes}.items() if v is not None or k not in changes}


CRAFTED_CONTENTS = {
    "a config field missing": (lambda t, c: (t, changed(c, dim=None)), "the config has fields"),
    "an unknown config field": (lambda t, c: (t, changed(c, evil=1)), "the config has fields"),
    "a size as a string": (lambda t, c: (t, changed(c, dim="64")), "config dim = '64' is not"),
    "a size as a bool": (lambda t, c: (t, changed(c, hidden_dim=True)), "config hidden_dim = True is not"),
    "a size as a float": (lambda t, c: (t, changed(c, hidden_dim=32.0)), "config hidden_dim = 32.0 is not"),
    "a negative size": (lambda t, c: (t, changed(c, hidden_dim=-32)), "config hidden_dim = -32 is not"),
    "a size of 2^40": (lambda t, c: (t, changed(c, hidden_dim=2 ** 40)), f"config hidden_dim = {2 ** 40} is not"),
    "a hidden size the tensors do not have": (lambda t, c: (t, changed(c, hidden_dim=c["hidden_dim"] + 32)),
                                              "the config needs"),
    "a tensor missing": (lambda t, c: ({k: v for k, v in t.items() if k != max(t)}, c), "are missing"),
    "an extra tensor": (lambda t, c: ({**t, "evil": torch.zeros(1)}, c), r"\['evil'\] unexpected"),
    "a tensor of another shape": (lambda t, c: (changed(t, **{first_weight(t): t[first_weight(t)][:-1]}), c),
                                  "the config needs"),
    "a tensor of another dtype": (lambda t, c: ({k: v.double() if v.is_floating_point() else v for k, v in t.items()}, c),
                                  "is torch.float64"),
    "a NaN weight": (lambda t, c: ({k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                                    for k, v in t.items()}, c), "holds NaN or infinite values"),
}
HEAD_CONTENTS = {
    "NaN norm epsilon": (lambda t, c: (t, changed(c, norm_eps=float("nan"))), "config norm_eps = nan is not"),
    "RoPE factors of another length": (lambda t, c: (t, changed(c, rope_factors=[1.0] * 3)),
                                       "3 RoPE factors, the head dimension needs 8"),
    "a hidden size the drafter cannot quantize": (lambda t, c: (t, changed(c, hidden_dim=48)),
                                                  "hidden_dim 48 is not a positive multiple of 32"),
    "draft ids missing": (lambda t, c: (changed(t, draft_to_target=None), c), "draft_to_target must be int64"),
    "draft ids as int32": (lambda t, c: (changed(t, draft_to_target=t["draft_to_target"].int()), c),
                           r"draft_to_target must be int64 \(20,\)"),
    "a draft id past the vocabulary": (lambda t, c: (changed(t, draft_to_target=t["draft_to_target"] + 2), c),
                                       r"drafts token ids in \[2, 40\], the target's vocabulary has 40"),
    "a negative draft id": (lambda t, c: (changed(t, draft_to_target=t["draft_to_target"] - 1), c),
                            r"drafts token ids in \[-1, 37\]"),
    "an empty draft vocabulary": (lambda t, c: (changed(t, draft_to_target=torch.zeros(0, dtype=torch.long)),
                                                changed(c, vocab_size=0)), "with vocab_size >= 1"),
}
PREDICTOR_CONTENTS = {
    "k_max 0": (lambda t, c: (t, changed(c, k_max=0)), r"k_max must be in \[1, "),
}


CONTENTS_OF = {"head": {**CRAFTED_CONTENTS, **HEAD_CONTENTS}, "predictor": {**CRAFTED_CONTENTS, **PREDICTOR_CONTENTS}}


@pytest.mark.parametrize("part, label", [(name, label) for name, cases in CONTENTS_OF.items() for label in cases],
                         indirect=["part"])
def test_crafted_contents_are_refused(part, tmp_path, label):
    case, fault = CONTENTS_OF[part.name][label]
    tensors, config = case(dict(part.tensors), dict(part.config))
    path = tmp_path / "crafted"
    save_weights_file(str(path), tensors, config, part.metadata)
    with time_limit(), pytest.raises(ValueError, match=fault) as refusal:
        part.load(path)
    assert str(path) in str(refusal.value)


# ---------------------------------------------------------------- no pickle
class RunsCode:
    """Unpickled, it makes a directory: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_pickle_is_refused_without_being_run(part, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "payload"
    torch.save({"config": part.config, "weights": RunsCode(str(marker))}, str(path))  # the old format's shape
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        part.load(path)
    assert not marker.exists()


def test_no_pickle_in_the_package():
    """What reads or writes files in the package does it without pickle (torch.load / torch.save included)."""
    package = pathlib.Path(specdec_kernels.__file__).parent
    pickling = re.compile(r"\bimport pickle\b|torch\.(load|save)\(|allow_pickle\s*=\s*True|\bjoblib\b|\bdill\b")
    found = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1) if pickling.search(line)]
    assert not found, found


# ---------------------------------------------------------------- intermediate recipes (JSON)
CRAFTED_RECIPES = {
    "not JSON": ('{"layers": [0', "is not a JSON file"),
    "JSON nested 10^5 deep": ("[" * 100_000, "is not a JSON file"),
    "not an object": ("[0]", 'a recipe is a JSON object whose "layers" is a list of layer indices'),
    "no layers": ('{"vocabulary": "full"}', 'whose "layers" is a list of layer indices'),
    "layers as strings": ('{"layers": ["0"]}', 'whose "layers" is a list of layer indices'),
    "a layer the target lacks": ('{"layers": [0, 7]}', r"layers must be distinct increasing indices in \[0, 1\)"),
    "an unknown vocabulary": ('{"layers": [0], "vocabulary": 3}', "vocabulary is 'draft' or 'full', got 3"),
}


@pytest.mark.parametrize("label", list(CRAFTED_RECIPES))
def test_crafted_recipe_is_refused(tiny, tmp_path, label):
    text, fault = CRAFTED_RECIPES[label]
    path = tmp_path / "crafted.intermediate.json"
    path.write_text(text)
    with time_limit(), pytest.raises(ValueError, match=fault) as refusal:
        derive_intermediate(tiny, str(path), drafter=None)
    assert str(path) in str(refusal.value)
