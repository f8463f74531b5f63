"""The decoding tests' models and Decoder: more loads of the tiny target (tests/conftest.py), a related model, and
a Decoder that runs every method of methods.METHODS with parts small enough for tests."""
import json

import pytest
import torch
from helpers import PLANNER_TEST_COSTS, write_tiny_gguf
from specdec_kernels.drafters import LengthPredictor, PredictorConfig, save_head, save_predictor
from specdec_kernels.methods import Decoder
from specdec_kernels.models import load_gguf

K_MAX = 4  # the predictor's longest chain


def longest_chain_predictor(dim: int) -> LengthPredictor:
    """A length predictor that always asks for K_MAX draft tokens: the drafts that reach furthest into the cache."""
    predictor = LengthPredictor(PredictorConfig(dim, K_MAX, hidden_dim=8)).eval()
    with torch.no_grad():
        predictor.w_out.weight.zero_()
        predictor.w_out.bias.fill_(K_MAX)
    return predictor


@pytest.fixture(scope="module")
def tiny_parts(tiny, trained_head, tmp_path_factory) -> dict:
    """Decoder's part files for the tiny target: the trained head, the predictor above, and an intermediate
    recipe (the target's one layer: HierSpec's mechanics, its sequences always kept)."""
    folder = tmp_path_factory.mktemp("parts")
    parts = {"head_path": str(folder / "tiny.head"), "predictor_path": str(folder / "tiny.predictor"),
             "intermediate_path": str(folder / "tiny.intermediate.json")}
    save_head(trained_head, parts["head_path"])
    save_predictor(longest_chain_predictor(tiny.config.dim), parts["predictor_path"])
    with open(parts["intermediate_path"], "w", encoding="utf-8") as f:
        json.dump({"layers": [0], "vocabulary": "full"}, f)
    return parts


@pytest.fixture(scope="module")
def make_decoder(tiny_parts):
    """make_decoder(model, **options) -> a methods.Decoder running every method on `model` (the tiny target or
    another load of its file)."""
    def make(model, **options) -> Decoder:
        # the name is never read: every part is given, the planner's costs too (a curve that makes `auto` grow trees)
        return Decoder("tiny.gguf", model, **tiny_parts, costs=PLANNER_TEST_COSTS, **options)

    return make


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    """The tiny target's file (write_tiny_gguf writes the same weights every time): load it for a model of one's
    own, as load_gguf(tiny_path, max_seq_len=128)."""
    path = str(tmp_path_factory.mktemp("tiny_again") / "tiny.gguf")
    write_tiny_gguf(path, logit_scale=5.0)
    return path


@pytest.fixture(scope="module")
def related(tmp_path_factory):
    """A model of the tiny target's shape and vocabulary, weights perturbed by 25%: as an intermediate it agrees
    with the target often but not always (rejections at the target's level); as a second model, it decodes
    other tokens."""
    path = str(tmp_path_factory.mktemp("related") / "related.gguf")
    write_tiny_gguf(path, logit_scale=5.0, perturb=0.25)
    return load_gguf(path, max_seq_len=128)


@pytest.fixture
def threads():
    """threads(n): n intra-op threads for the rest of the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
