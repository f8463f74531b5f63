"""The acceptance prior (planner/calibration.py): what recording counts, the fitted curve, its file next to the head
and what a damaged one does, and a Decoder that plans with it while decoding stays greedy-exact."""
import json
import math
import os

import pytest
from helpers import PLANNER_TEST_COSTS
from specdec_kernels.decoding import speculative_generate
from specdec_kernels.drafters import EagleDrafter, save_head
from specdec_kernels.methods import Decoder
from specdec_kernels.planner import Planner
from specdec_kernels.planner.acceptance import BINS
from specdec_kernels.planner.calibration import (
    IDENTITY,
    Counts,
    RecordingPlanner,
    fit_prior,
    load_prior,
    measure_calibration,
    prior_path,
    save_prior,
)

PROMPTS = [[3, 1, 4, 1, 5], [2, 7, 1, 8]]


@pytest.fixture
def fresh_head(trained_head, tmp_path) -> str:
    """A head file of its own: a test may write a prior next to it."""
    path = str(tmp_path / "tiny.eagle.safetensors")
    save_head(trained_head, path)
    return path


def counts(observed: dict) -> Counts:
    """{bin: (seen, accepted)} -> Counts."""
    c = Counts()
    for b, (seen, accepted) in observed.items():
        c.seen[b], c.accepted[b] = seen, accepted
    return c


def test_recording_counts_each_node_in_its_bin():
    planner = RecordingPlanner(PLANNER_TEST_COSTS)
    # path probabilities 0.93, 0.51, 0.01 (bins 18, 10, 0), then 0.96 and 0.94 (bin 19, bin 18)
    planner.observe([math.log(0.93), math.log(0.51), math.log(0.01)], [-1, 0, 0, 1], [True, False, False], 2, 4, True)
    planner.reset()  # a new sequence: the counts go on
    planner.observe([math.log(0.96), math.log(0.94)], [-1, 0, 1], [True, True], 3, 3, True)
    expected = counts({0: (1, 0), 10: (1, 0), 18: (2, 2), 19: (1, 1)})
    assert planner.counts == expected
    assert planner.curve.seen[18] > 0, "the planner itself must still learn from the step"


def test_measured_counts_are_the_verified_and_accepted_drafts(tiny, trained_head):
    """Every verified draft node is counted once and the accepted ones are the tokens the steps accepted; the same
    runs without recording emit the same tokens."""
    drafter = EagleDrafter(tiny, trained_head)
    measured = measure_calibration(tiny, drafter, PLANNER_TEST_COSTS, PROMPTS, 40)
    runs = [speculative_generate(tiny, drafter, p, 40, planner=Planner(PLANNER_TEST_COSTS)) for p in PROMPTS]
    assert sum(measured.seen) == sum(size - 1 for out in runs for size in out.draft_sizes)
    assert sum(measured.accepted) == sum(a - 1 for out in runs for a in out.accepted_per_step) > 20
    assert sum(s > 0 for s in measured.seen) >= 3, "drafts of several probabilities"


def test_fit_prior_pools_violators_and_fills_empty_bins():
    prior = fit_prior(counts({3: (10, 8), 4: (10, 2), 10: (10, 9)}))
    # bins 3, 4 pool to 0.5; the empty bins 5-9 below it and 11-17 below 0.9 join their pools; the rest: identity
    expected = IDENTITY[:3] + [0.5] * 7 + [0.9] * 8 + IDENTITY[18:]
    assert prior == pytest.approx(expected)
    assert all(a <= b for a, b in zip(prior, prior[1:]))
    assert fit_prior(Counts()) == pytest.approx(IDENTITY)


def test_prior_path_of_a_head_file_and_of_an_eagle3_folder(tmp_path):
    assert prior_path("/h/SmolLM2.Q4_1.eagle.safetensors") == "/h/SmolLM2.Q4_1.acceptance.json"
    folder = tmp_path / "SmolLM2.eagle3"
    folder.mkdir()
    assert prior_path(str(folder)) == str(folder / "acceptance.json")


def test_the_prior_round_trips_through_its_file(fresh_head):
    c = counts({2: (40, 3), 7: (5, 5), 15: (30, 24)})
    written = save_prior(fresh_head, c, command="test")
    assert written == prior_path(fresh_head) and written.endswith("tiny.acceptance.json")
    assert load_prior(fresh_head) == fit_prior(c)
    with open(written) as f:
        assert json.load(f)["seen"] == c.seen


def test_an_eagle3_folder_keeps_its_prior_inside(tmp_path):
    folder = tmp_path / "tiny.eagle3"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    save_prior(str(folder), counts({5: (10, 1)}))
    assert load_prior(str(folder)) == fit_prior(counts({5: (10, 1)}))  # the prior's own bytes are not the head's
    (folder / "model.safetensors").write_bytes(b"other weights")
    with pytest.warns(UserWarning, match="measured for head"):
        assert load_prior(str(folder)) is None


def damage(entry: dict, how: str):
    if how == "not json":
        return "{not json"
    if how == "another version":
        entry["version"] = 2
    elif how == "another head":
        entry["head"]["bytes"] += 1
    elif how == "19 bins":
        entry["prior"] = entry["prior"][:-1]
    elif how == "a probability above 1":
        entry["prior"][-1] = 1.5
    elif how == "a string":
        entry["prior"][0] = "0.1"
    return json.dumps(entry)


@pytest.mark.parametrize("how", ["not json", "another version", "another head", "19 bins",
                                 "a probability above 1", "a string"])
def test_a_damaged_or_foreign_prior_warns_and_falls_back_to_identity(tiny, fresh_head, how):
    path = save_prior(fresh_head, counts({5: (10, 1)}))
    with open(path) as f:
        entry = json.load(f)
    with open(path, "w") as f:
        f.write(damage(entry, how))
    with pytest.warns(UserWarning, match="ignoring the acceptance prior"):
        assert load_prior(fresh_head) is None
    with pytest.warns(UserWarning):
        planner = Decoder("tiny.gguf", tiny, head_path=fresh_head, costs=PLANNER_TEST_COSTS).planner
    assert planner.prior is None and planner.curve.rates == pytest.approx(IDENTITY)


def test_no_prior_file_is_no_prior_and_no_warning(fresh_head, recwarn):
    assert not os.path.exists(prior_path(fresh_head))
    assert load_prior(fresh_head) is None and load_prior(None) is None
    assert not recwarn.list


def pessimistic() -> Counts:
    """Counts of a drafter the target accepts far less often than it claims: the planner then drafts less."""
    return counts({b: (100, 100 * b // (4 * BINS)) for b in range(BINS)})


def test_the_decoder_plans_with_the_heads_prior_and_stays_greedy_exact(tiny, fresh_head):
    save_prior(fresh_head, pessimistic())
    with_prior = Decoder("tiny.gguf", tiny, head_path=fresh_head, costs=PLANNER_TEST_COSTS)
    assert with_prior.planner.prior == fit_prior(pessimistic())
    os.remove(prior_path(fresh_head))
    without = Decoder("tiny.gguf", tiny, head_path=fresh_head, costs=PLANNER_TEST_COSTS)
    assert without.planner.prior is None
    for prompt in PROMPTS:
        planned = with_prior.generate("auto", prompt, 60)
        assert planned.tokens == without.generate("vanilla", prompt, 60).tokens
        assert planned.draft_sizes != without.generate("auto", prompt, 60).draft_sizes, "the prior changed no draft"


def test_the_decoder_takes_the_prior_of_the_eagle3_head_it_plans_with(tiny, tmp_path):
    folder = tmp_path / "tiny.eagle3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle3"]}))
    save_prior(str(folder), pessimistic())
    decoder = Decoder("tiny.gguf", tiny, head_path=str(folder), costs=PLANNER_TEST_COSTS)
    assert decoder.planned_head == str(folder) and decoder.planner.prior == fit_prior(pessimistic())
