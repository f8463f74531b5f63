import os

import pytest
import specdec_kernels  # noqa: F401  (registers the ops)
import torch
from helpers import write_tiny_gguf
from specdec_kernels.drafters import EagleHead
from specdec_kernels.models import load_gguf
from specdec_kernels.train.eagle import generate_batch, train


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
    deselect_other_cpu_paths(config, items)


def deselect_other_cpu_paths(config, items):
    """SPECDEC_CPU_ISA set for a whole run tests that one CPU path: the tests parametrized over paths run only
    it, so that one run per path (scripts/test_asan.sh) runs each parametrized case once."""
    forced = os.environ.get("SPECDEC_CPU_ISA")
    if not forced:
        return

    def other_path(item) -> bool:
        return hasattr(item, "callspec") and item.callspec.params.get("isa", forced) != forced

    deselected = [item for item in items if other_path(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not other_path(item)]


@pytest.fixture(scope="session", autouse=True)
def private_cache_folder(tmp_path_factory):
    """The planner caches measured costs in the user's cache folder: tests keep theirs in a temporary one."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


# The decoding tests' tiny target and a head trained briefly on it (module-scoped: training takes seconds).
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    write_tiny_gguf(path, logit_scale=5.0)
    return load_gguf(path, max_seq_len=128)


@pytest.fixture(scope="module")
def trained_head(tiny):
    """A head trained briefly on the tiny target's greedy answers: it drafts likely tokens (many acceptances),
    and its chains are accepted for anything from 0 to several tokens."""
    torch.manual_seed(0)
    head = EagleHead.from_target(tiny, torch.arange(40))
    prompts = torch.randint(0, 40, (48, 3), generator=torch.Generator().manual_seed(0)).tolist()
    train(head, tiny.embedding, generate_batch(tiny, prompts, 16), epochs=8, lr=3e-3, tokens_per_batch=256,
          log=lambda _: None)
    return head
