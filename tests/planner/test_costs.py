"""The planner's step costs: measured on a real (tiny) target and drafter, cached per key, and never trusted
when the cache entry is damaged or another machine's, model's or head's."""
import json

import pytest
from specdec_kernels.drafters import EagleDrafter
from specdec_kernels.planner import StepCosts, costs

KNOWN = StepCosts(forward_ms=(5.0, 5.5, 7.0), extend_ms=0.4, level_ms=0.6)


def test_measured_costs_are_sane_and_leave_the_caches_empty(tiny, trained_head):
    drafter = EagleDrafter(tiny, trained_head)
    measured = costs.measure(tiny, drafter, max_nodes=4, context=16, repeats=2, seconds=0.0)
    assert measured.max_nodes == 4
    assert list(measured.forward_ms) == sorted(measured.forward_ms)
    assert int(tiny.cache_lens[0]) == 0 and drafter.length == 0


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A model and a head file, the cache folder under tmp_path, and `measure` replaced by a counter."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, head = tmp_path / "model.gguf", tmp_path / "head.safetensors"
    model.write_bytes(b"model")
    head.write_bytes(b"head")
    calls = []
    monkeypatch.setattr(costs, "measure", lambda target, drafter: calls.append(1) or KNOWN)
    return str(model), str(head), calls


def test_costs_are_measured_once_then_read_from_the_cache(files):
    model, head, calls = files
    assert costs.step_costs(None, None, model, head) == KNOWN
    assert costs.step_costs(None, None, model, head) == KNOWN
    assert len(calls) == 1
    costs.step_costs(None, None, model, head, recalibrate=True)
    assert len(calls) == 2


DAMAGE = {
    "not json": lambda text: text[: len(text) // 2],
    "negative cost": lambda text: text.replace("0.4", "-0.4"),
    "missing field": lambda text: text.replace("level_ms", "level"),
    "another key": lambda text: text.replace('"threads"', '"threads_"'),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_cache_entry_is_remeasured(files, damage):
    model, head, calls = files
    costs.step_costs(None, None, model, head)
    path = costs.cache_path(costs.cost_key(model, head))
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(DAMAGE[damage](text))
    assert costs.step_costs(None, None, model, head) == KNOWN
    assert len(calls) == 2
    with open(path) as f:
        assert json.load(f)["costs"]["extend_ms"] == KNOWN.extend_ms  # rewritten


def test_a_changed_model_file_is_another_key(files):
    model, head, calls = files
    costs.step_costs(None, None, model, head)
    with open(model, "ab") as f:
        f.write(b"more")
    costs.step_costs(None, None, model, head)
    assert len(calls) == 2
