"""The draft head's training prompts stay apart from the end-to-end prompts that measure it: acceptance on
those prompts is reported as acceptance on unseen text, so none of them (nor a close copy) may be trained on."""
import re

from specdec_kernels.bench.e2e import DEFAULT_PROMPTS, first_turns
from specdec_kernels.train import prompts

everyday = prompts.EVERYDAY  # the human-written texts (train/data/everyday.jsonl)


def words(text: str) -> set:
    return set(prompts.same_words(text).split())


def test_prompt_sets_are_package_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found from any working directory, not by a path relative to the repository
    assert first_turns() == first_turns(DEFAULT_PROMPTS) and len(first_turns()) > 7


def test_round_one_leaves_out_the_measured_prompts():
    turns = first_turns(DEFAULT_PROMPTS)
    made = {prompts.same_words(m[0]["content"]) for m in prompts.round_one()}
    assert {"is photosynthesis what", "144 is of root square the what"} <= made  # templates do produce some
    kept = {prompts.same_words(m[0]["content"]) for m in prompts.round_one(exclude=turns)}
    assert not kept & {prompts.same_words(turn) for turn in turns}
    assert len(made) - len(kept) == len(made & {prompts.same_words(turn) for turn in turns})


def test_everyday_texts_are_not_close_copies_of_end_to_end_texts():
    # Passages and reading contexts share at most 0.5 of their words with an end-to-end text (after its task
    # prefix: "Summarize:", "Context:"); short sentences and questions may share a template ("What is the
    # capital of ...?"), not all their words.
    bodies = [words(re.sub(r"^[^:]*:", "", turn)) for turn in first_turns(DEFAULT_PROMPTS)]
    passages = list(everyday.passages) + [f"{context} {question}" for context, question in everyday.reading]
    closest = max(len(words(text) & body) / len(words(text) | body) for text in passages for body in bodies)
    assert closest < 0.5, closest
    short = {prompts.same_words(text) for text in everyday.sentences + everyday.questions}
    assert not short & {prompts.same_words(" ".join(body)) for body in bodies}


def test_everyday_lists_are_distinct_and_all_used():
    for name in ("sentences", "passages", "questions", "reading"):
        items = getattr(everyday, name)
        assert len(items) == len(set(items)) >= 200, name
    tasks = prompts.everyday_tasks(prompts.random.Random(0))
    assert len(tasks) == len(everyday.sentences) + 2 * len(everyday.passages) + len(everyday.reading) + len(
        everyday.questions)
    assert len(set(tasks)) == len(tasks)


def test_round_two_does_not_build_on_text_tasks():
    tasks = [text for text in prompts.everyday_tasks(prompts.random.Random(0)) if text.startswith(prompts.TEXT_TASKS)]
    assert len(tasks) == len(everyday.sentences) + 2 * len(everyday.passages) + len(everyday.reading)
    answered = [([{"role": "user", "content": text}], "Une longue reponse. " * 10) for text in tasks]
    assert prompts.round_two(answered) == []
