"""The training conversations for draft heads: built from the package data in train/data/ (nothing is
downloaded), in the task mix of the end-to-end prompts (writing, multi-turn, coding, translation,
summarization, QA, math, RAG) but none of their questions (the tests of these prompts check).

train/data/recipes.json: topics, the templates asked over them, coding tasks and concepts, math in 19 forms,
follow-up turns. train/data/everyday.jsonl: everyday texts written by hand for this project, one a line by
kind: short sentences to translate, short passages to summarize, reading contexts with one question each,
general-knowledge questions.

Round 1 asks single questions (and asks the target to write questions) and sets tasks over the everyday texts;
round 2 builds on round 1's answers: the target's own questions, follow-up turns (multi-turn), and summaries,
questions and translations over the paragraphs the target wrote (summarization, RAG, translation).
"""
import json
import random
import re
from dataclasses import dataclass
from importlib import resources


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Recipes:
    """train/data/recipes.json: "{topic}", "{language}", "{task}", ... are filled in by round_one."""
    topics: list            # what single questions are about
    single_turn: list       # question templates over a topic
    self_instruct: str      # asks the target to write a question about a topic (round two asks it back)
    coding: list            # "... a function that {task}"
    concepts: list          # programming concepts to explain
    languages: list         # programming languages
    coding_styles: list     # templates over a coding task and a language
    concept_styles: list    # templates over a concept and a language
    math: list              # word problems over random numbers
    items: list             # things with a price (math)
    things: list            # things to count (math)
    polygons: list          # shapes with angles (math)
    follow_ups: list        # second user turns (round two)
    over_passage: list      # summaries and questions over the target's paragraphs (round two)
    target_languages: list  # languages to translate into
    summary_styles: list    # templates over a human-written passage


@dataclass(frozen=True)
class Everyday:
    """train/data/everyday.jsonl: human-written texts, each kind in file order."""
    sentences: list  # to translate
    passages: list   # to summarize
    reading: list    # (context, question) pairs
    questions: list  # asked as they are


def load_everyday() -> Everyday:
    records = [json.loads(line) for line in _read("everyday.jsonl").splitlines() if line.strip()]
    texts = {kind: [r["text"] for r in records if r["kind"] == kind]
             for kind in ("sentence", "passage", "question")}
    reading = [(r["context"], r["question"]) for r in records if r["kind"] == "reading"]
    return Everyday(texts["sentence"], texts["passage"], reading, texts["question"])


RECIPES = Recipes(**json.loads(_read("recipes.json")))
EVERYDAY = load_everyday()

# Round one's tasks over given text; round two does not build on their answers (translations, summaries).
TEXT_TASKS = ("Translate to", "Summarize", "Context:")


def everyday_tasks(rng: random.Random) -> list:
    """Tasks over the human-written texts of train/data/everyday.jsonl: each sentence translated, each passage
    summarized in two styles, each reading context asked its question, each question asked."""
    texts = [f"Translate to {rng.choice(RECIPES.target_languages)}: {sentence}"
             for sentence in EVERYDAY.sentences]
    texts += [style.format(passage=passage) for passage in EVERYDAY.passages
              for style in rng.sample(RECIPES.summary_styles, 2)]
    texts += [f"Context: {context} Question: {question}" for context, question in EVERYDAY.reading]
    return texts + list(EVERYDAY.questions)


def same_words(text: str) -> str:
    """A text's words, lowercased and sorted: two prompts that differ only in case, punctuation or word order
    match."""
    return " ".join(sorted(re.findall(r"[a-z0-9]+", text.lower())))


def round_one(seed: int = 0, topic_prompts: int = 1800, exclude=()) -> list:
    """Single-turn conversations: [{"role": "user", "content": ...}] each; none with the words of a text in
    `exclude` (the prompts acceptance is measured on: a template can produce one, e.g. "What is {topic}?")."""
    rng = random.Random(seed)
    r = RECIPES
    texts = rng.sample([t.format(topic=topic) for topic in r.topics for t in r.single_turn], topic_prompts)
    texts += [r.self_instruct.format(topic=topic) for topic in r.topics]
    texts += [s.format(language=lang, task=task)
              for task in r.coding for lang in r.languages for s in r.coding_styles if rng.random() < 0.3]
    texts += [s.format(concept=c, language=rng.choice(r.languages))
              for c in r.concepts for s in r.concept_styles]
    for _ in range(600):
        a, b = rng.randint(2, 60), rng.randint(2, 30)
        texts.append(rng.choice(r.math).format(
            a=a, b=b, big=a * b + rng.randint(0, 99), linear=b * rng.randint(1, 20) + a,
            square=rng.randint(2, 30) ** 2, item=rng.choice(r.items), price=5 * rng.randint(2, 40),
            percent=rng.choice([10, 20, 25, 30, 40, 50]), things=rng.choice(r.things),
            polygon=rng.choice(r.polygons)))
    texts += everyday_tasks(rng)
    rng.shuffle(texts)
    excluded = {same_words(text) for text in exclude}
    return [[{"role": "user", "content": text}] for text in texts if same_words(text) not in excluded]


def round_two(answered: list, seed: int = 1) -> list:
    """Conversations built on round one's: `answered` holds (messages, answer text) pairs."""
    rng = random.Random(seed)
    conversations, self_instruct = [], RECIPES.self_instruct.split("{")[0]
    for messages, answer in answered:
        if messages[0]["content"].startswith(self_instruct):  # the target's question, asked back
            if answer.strip().endswith("?") and len(answer) < 300:
                conversations.append([{"role": "user", "content": answer.strip()}])
            continue
        if messages[0]["content"].startswith(TEXT_TASKS):
            continue
        choice = rng.random()
        if choice < 0.35:
            conversations.append(messages + [{"role": "assistant", "content": answer},
                                             {"role": "user", "content": rng.choice(RECIPES.follow_ups)}])
        elif choice < 0.7 and len(answer) > 80:
            passage = " ".join(answer.split())
            task = rng.choice(RECIPES.over_passage).format(passage=passage)
            conversations.append([{"role": "user", "content": task}])
        elif choice < 0.85:
            sentence = answer.split(". ")[0].strip()
            if 20 < len(sentence) < 200:
                language = rng.choice(RECIPES.target_languages)
                conversations.append([{"role": "user", "content": f"Translate to {language}: {sentence}."}])
    return conversations
