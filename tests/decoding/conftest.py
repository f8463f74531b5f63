"""The decoding tests' models and Decoder: the tiny target (tests/conftest.py) with four layers here (EAGLE-3 reads
three distinct ones), more loads of it, a related model, and a Decoder that runs every method of methods.METHODS
with parts small enough for tests."""
import json

import pytest
import torch
from helpers import PLANNER_TEST_COSTS, write_tiny_gguf
from specdec_kernels.drafters import (Eagle3Head, LengthPredictor, PredictorConfig, save_eagle3, save_head,
                                      save_predictor)
from specdec_kernels.methods import Decoder
from specdec_kernels.models import load_gguf
from specdec_kernels.quant import dense_weight
from specdec_kernels.train import eagle3
from specdec_kernels.train.eagle import generate_batch

K_MAX = 4  # the predictor's longest chain
N_LAYERS, FEATURE_LAYERS = 4, (1, 2, 3)


def longest_chain_predictor(dim: int) -> LengthPredictor:
    """A length predictor that always asks for K_MAX draft tokens: the drafts that reach furthest into the cache."""
    predictor = LengthPredictor(PredictorConfig(dim, K_MAX, hidden_dim=8)).eval()
    with torch.no_grad():
        predictor.w_out.weight.zero_()
        predictor.w_out.bias.fill_(K_MAX)
    return predictor


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    """The tiny target's file (write_tiny_gguf writes the same weights every time): load it for a model of one's
    own, as load_gguf(tiny_path, max_seq_len=128)."""
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    write_tiny_gguf(path, logit_scale=5.0, n_layers=N_LAYERS)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_gguf(tiny_path, max_seq_len=128)


@pytest.fixture(scope="module")
def trained_eagle3_head(tiny) -> Eagle3Head:
    """An EAGLE-3 head trained briefly on the tiny target's greedy answers (as trained_head, tests/conftest.py)."""
    torch.manual_seed(0)
    head = Eagle3Head.from_target(tiny, torch.arange(40), FEATURE_LAYERS)
    prompts = torch.randint(0, 40, (48, 3), generator=torch.Generator().manual_seed(0)).tolist()
    sequences = [eagle3.FeatureSequence(s.tokens, s.answer_start) for s in generate_batch(tiny, prompts, 16)]
    eagle3.prefill_features(tiny, sequences, FEATURE_LAYERS)
    eagle3.train(head, dense_weight(tiny.lm_head), tiny.embedding, sequences, epochs=8, lr=3e-3,
                 tokens_per_batch=256, log=lambda _: None)
    return head


@pytest.fixture(scope="module")
def tiny_parts(tiny, trained_head, trained_eagle3_head, tmp_path_factory) -> dict:
    """Decoder's part files for the tiny target: the trained heads, the predictor above, and an intermediate
    recipe (all the target's layers: HierSpec's mechanics, its sequences always kept)."""
    folder = tmp_path_factory.mktemp("parts")
    parts = {"head_path": str(folder / "tiny.head"), "predictor_path": str(folder / "tiny.predictor"),
             "intermediate_path": str(folder / "tiny.intermediate.json"), "eagle3_path": str(folder / "tiny.eagle3")}
    save_head(trained_head, parts["head_path"])
    save_eagle3(trained_eagle3_head, parts["eagle3_path"], target_vocab=40)
    save_predictor(longest_chain_predictor(tiny.config.dim), parts["predictor_path"])
    with open(parts["intermediate_path"], "w", encoding="utf-8") as f:
        json.dump({"layers": list(range(N_LAYERS)), "vocabulary": "full"}, f)
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
def related(tmp_path_factory):
    """A model of the tiny target's shape and vocabulary, weights perturbed by 25%: as an intermediate it agrees
    with the target often but not always (rejections at the target's level); as a second model, it decodes
    other tokens."""
    path = str(tmp_path_factory.mktemp("related") / "related.gguf")
    write_tiny_gguf(path, logit_scale=5.0, perturb=0.25, n_layers=N_LAYERS)
    return load_gguf(path, max_seq_len=128)


@pytest.fixture
def threads():
    """threads(n): n intra-op threads for the rest of the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
