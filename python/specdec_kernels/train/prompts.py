"""The training conversations for draft heads: built from the lists below (nothing is downloaded), in the
task mix of the end-to-end prompts (writing, multi-turn, coding, translation, summarization, QA, math, RAG)
but none of their questions.

Round 1 asks single questions (and asks the target to write questions) and sets tasks over the human-written
texts of train/everyday.py; round 2 builds on round 1's answers: the target's own questions, follow-up turns
(multi-turn), and summaries, questions and translations over the paragraphs the target wrote (summarization,
RAG, translation).
"""
import random
import re

from .everyday import PASSAGES, QUESTIONS, READING, SENTENCES

TOPICS = [
    "the moon", "volcanoes", "honey bees", "the internet", "rainforests", "electric cars", "chess", "coffee",
    "the ocean tides", "ancient Rome", "photosynthesis", "black holes", "the human heart", "recycling",
    "solar panels", "dinosaurs", "the violin", "mountains", "bread baking", "friendship", "the Olympic games",
    "penguins", "earthquakes", "libraries", "trains", "the immune system", "gardening", "clouds", "robots",
    "the printing press", "deserts", "whales", "vaccines", "democracy", "money", "music festivals", "glaciers",
    "airplanes", "the brain", "renewable energy", "spiders", "the pyramids", "social media", "bicycles",
    "rivers", "sleep", "the solar system", "cheese", "football", "lighthouses", "owls", "climate change",
    "video games", "the stock market", "tea", "bridges", "the Renaissance", "mushrooms", "kites", "space travel",
    "elephants", "the water cycle", "hurricanes", "the French Revolution", "chocolate", "yoga", "smartphones",
    "coral reefs", "the Great Wall of China", "jazz", "wind turbines", "bees and flowers", "the Amazon river",
    "public transport", "marathon running", "the periodic table", "comets", "wolves", "pizza", "origami",
    "the Industrial Revolution", "artificial intelligence", "rain", "camping", "museums", "the Sahara",
    "submarines", "basketball", "dolphins", "the Moon landing", "volunteering", "podcasts", "castles",
    "bamboo", "the Roman Empire", "cloud computing", "frogs", "ice cream", "the Eiffel Tower", "painting",
    "the Arctic", "hot air balloons", "vitamins", "fireworks", "tigers", "opera", "the rainbow", "sushi",
    "farming", "the Nile", "computers", "sharks", "the Silk Road", "ballet", "batteries", "butterflies",
    "time zones", "the heartbeat", "skateboarding", "pottery", "the seasons", "magnets", "archaeology",
    "the Vikings", "knitting", "tornadoes", "cats", "dogs", "the alphabet", "maps", "weddings", "clocks",
    "photography", "the stars", "bread", "rice", "the city of Paris", "Tokyo", "New York", "the Alps",
    "forests", "rivers and lakes", "birds migrating", "the first computers", "email", "passwords",
    "healthy eating", "exercise", "learning a language", "job interviews", "saving money", "traveling abroad",
    "making friends", "studying for exams", "cooking pasta", "planting a tree", "writing a novel",
    "climbing a mountain", "a rainy day", "a summer holiday", "a birthday party", "a school trip",
    "a lost dog", "an old bookshop", "a small village", "a busy airport", "a robot who learns to paint",
    "a dragon who is afraid of fire", "a detective cat", "a time traveler", "the first day at a new job",
    "gravity", "electricity", "the speed of light", "DNA", "evolution", "the atom", "sound waves",
    "nuclear energy", "the greenhouse effect", "the moon phases", "blood", "bones", "the lungs", "teeth",
    "the ozone layer", "plastic pollution", "clean water", "cities of the future", "online shopping",
    "remote work", "electric bikes", "board games", "the guitar", "the piano", "poetry", "theater",
    "the Olympics", "tennis", "swimming", "the World Cup", "the history of writing", "ancient Egypt",
    "Greek myths", "the Middle Ages", "knights", "pirates", "explorers", "the telephone", "radio",
    "television", "newspapers", "banks", "taxes", "elections", "human rights", "kindness", "honesty",
    "patience", "courage", "happiness", "stress", "meditation", "sleep habits", "breakfast", "coffee shops",
]

SINGLE_TURN = [
    "Write a short poem about {topic}.", "Write a short story about {topic}.", "Write a short paragraph about {topic}.",
    "Give me three interesting facts about {topic}.", "Explain {topic} to a ten-year-old.",
    "What is the history of {topic}?", "Why is {topic} important?", "Write a haiku about {topic}.",
    "Write a short blog post about {topic}.", "List five words related to {topic}.",
    "Write a limerick about {topic}.", "Describe {topic} in three sentences.",
    "What are the pros and cons of {topic}?", "Write a letter to a friend about {topic}.",
    "Give me a fun quiz question about {topic} and its answer.", "Write a tweet about {topic}.",
    "What is {topic}?", "Tell me about {topic}.", "How does {topic} work?", "Write a story for children about {topic}.",
    "Describe {topic} to someone who has never seen it.", "Write a short speech about {topic}.",
    "What are some common questions about {topic}?", "Write a diary entry about {topic}.",
    "Write a product description for something related to {topic}.", "Write a slogan about {topic}.",
    "Give me two tips related to {topic}.", "Write a dialogue between two friends about {topic}.",
    "What would the world be like without {topic}?", "Compare {topic} with something similar.",
]
SELF_INSTRUCT = "Write one question that a curious student might ask about {topic}. Reply with the question only."

CODING = [
    "sorts a list of numbers", "counts the vowels in a string", "returns the factorial of n",
    "checks whether a string is a palindrome", "merges two sorted lists", "finds the largest number in a list",
    "removes duplicates from a list", "computes the n-th Fibonacci number", "converts Celsius to Fahrenheit",
    "counts the words in a sentence", "returns the sum of the digits of a number", "flattens a nested list",
    "checks whether two strings are anagrams", "finds the most common element of a list",
    "reads a file and prints its lines", "returns the greatest common divisor of two numbers",
    "capitalizes every word in a sentence", "computes the average of a list", "checks for a leap year",
    "returns the squares of the even numbers in a list", "implements binary search",
    "converts a number to binary", "transposes a matrix", "validates an email address",
    "returns the length of the longest word", "counts how often each letter appears", "reverses a linked list",
    "checks whether a list is sorted", "returns the second largest number", "rotates a list by k positions",
]
CONCEPTS = ["a loop", "recursion", "a dictionary", "a class", "an exception", "a variable", "a function",
            "a list", "a string", "an API", "a database", "a unit test", "a pointer", "a hash table", "git"]
LANGUAGES = ["Python", "JavaScript", "C", "Java", "Rust", "Go"]
CODING_STYLES = [
    "Write a {language} function that {task}.", "How do I write a function in {language} that {task}?",
    "Write a {language} program that {task}, and explain it.",
]
CONCEPT_STYLES = ["Explain what {concept} is in programming, with an example.", "What is {concept} in {language}?"]

MATH = [
    "What is {a} times {b}?", "What is {a} plus {b}?", "What is {big} minus {a}?", "What is {big} divided by {b}?",
    "If I have {a} apples and buy {b} more, how many apples do I have?",
    "A train travels {a} kilometers per hour for {b} hours. How far does it go?",
    "What is {b} percent of {big}?", "Is {big} an even number? Explain.",
    "A box holds {b} pencils. How many boxes do I need for {big} pencils?", "What is the square of {a}?",
    "Solve for x: {b}x + {a} = {linear}.", "What is the square root of {square}?",
    "If a {item} costs {price} dollars and is {percent} percent off, what is the price?",
    "If I have {big} {things} and give away {b}, how many are left?", "What is the sum of the angles of a {polygon}?",
    "What is the area of a rectangle that is {a} meters long and {b} meters wide?", "How many minutes are in {b} hours?",
    "What is the perimeter of a square with sides of {a} centimeters?", "What is {a} squared minus {b}?",
]
ITEMS = ["book", "lamp", "jacket", "backpack", "chair", "watch", "pair of shoes", "bicycle", "pizza", "ticket"]
THINGS = ["cookies", "marbles", "stickers", "pencils", "oranges", "cards", "balloons", "coins", "candies", "books"]
POLYGONS = ["square", "rectangle", "pentagon", "hexagon", "quadrilateral", "octagon"]

FOLLOW_UPS = [
    "Now make it shorter.", "Rewrite it for a young child.", "Make it more formal.", "Can you make it funnier?",
    "Now write it as a list.", "Give it a title.", "Explain the second sentence in more detail.",
    "Translate the first sentence into Spanish.", "What is the main idea?", "Add one more example.",
]
OVER_PASSAGE = [
    "Summarize in one sentence: {passage}", "Summarize the following text in a few words: {passage}",
    "Context: {passage} Question: What is this text about?",
    "Context: {passage} Question: What is one fact mentioned in the text?",
    "Read this and give it a title: {passage}",
]
TARGET_LANGUAGES = ["French", "Spanish", "German", "Italian"]
SUMMARY_STYLES = ["Summarize: {passage}", "Summarize in one sentence: {passage}", "Summarize in a few words: {passage}"]
# Round one's tasks over given text; round two does not build on their answers (translations, summaries).
TEXT_TASKS = ("Translate to", "Summarize", "Context:")


def everyday_tasks(rng: random.Random) -> list:
    """Tasks over the human-written texts of train/everyday.py: each sentence translated, each passage
    summarized in two styles, each reading context asked its question, each question asked."""
    texts = [f"Translate to {rng.choice(TARGET_LANGUAGES)}: {sentence}" for sentence in SENTENCES]
    texts += [style.format(passage=passage) for passage in PASSAGES for style in rng.sample(SUMMARY_STYLES, 2)]
    texts += [f"Context: {context} Question: {question}" for context, question in READING]
    return texts + list(QUESTIONS)


def same_words(text: str) -> str:
    """A text's words, lowercased and sorted: two prompts that differ only in case, punctuation or word order
    match."""
    return " ".join(sorted(re.findall(r"[a-z0-9]+", text.lower())))


def round_one(seed: int = 0, topic_prompts: int = 1800, exclude=()) -> list:
    """Single-turn conversations: [{"role": "user", "content": ...}] each; none with the words of a text in
    `exclude` (the prompts acceptance is measured on: a template can produce one, e.g. "What is {topic}?")."""
    rng = random.Random(seed)
    texts = rng.sample([t.format(topic=topic) for topic in TOPICS for t in SINGLE_TURN], topic_prompts)
    texts += [SELF_INSTRUCT.format(topic=topic) for topic in TOPICS]
    texts += [s.format(language=lang, task=task) for task in CODING for lang in LANGUAGES for s in CODING_STYLES
              if rng.random() < 0.3]
    texts += [s.format(concept=c, language=rng.choice(LANGUAGES)) for c in CONCEPTS for s in CONCEPT_STYLES]
    for _ in range(600):
        a, b = rng.randint(2, 60), rng.randint(2, 30)
        texts.append(rng.choice(MATH).format(
            a=a, b=b, big=a * b + rng.randint(0, 99), linear=b * rng.randint(1, 20) + a,
            square=rng.randint(2, 30) ** 2, item=rng.choice(ITEMS), price=5 * rng.randint(2, 40),
            percent=rng.choice([10, 20, 25, 30, 40, 50]), things=rng.choice(THINGS), polygon=rng.choice(POLYGONS)))
    texts += everyday_tasks(rng)
    rng.shuffle(texts)
    excluded = {same_words(text) for text in exclude}
    return [[{"role": "user", "content": text}] for text in texts if same_words(text) not in excluded]


def round_two(answered: list, seed: int = 1) -> list:
    """Conversations built on round one's: `answered` holds (messages, answer text) pairs."""
    rng = random.Random(seed)
    conversations = []
    for messages, answer in answered:
        if messages[0]["content"].startswith(SELF_INSTRUCT.split("{")[0]):  # the target's question, asked back
            if answer.strip().endswith("?") and len(answer) < 300:
                conversations.append([{"role": "user", "content": answer.strip()}])
            continue
        if messages[0]["content"].startswith(TEXT_TASKS):
            continue
        choice = rng.random()
        if choice < 0.35:
            conversations.append(messages + [{"role": "assistant", "content": answer},
                                             {"role": "user", "content": rng.choice(FOLLOW_UPS)}])
        elif choice < 0.7 and len(answer) > 80:
            passage = " ".join(answer.split())
            conversations.append([{"role": "user", "content": rng.choice(OVER_PASSAGE).format(passage=passage)}])
        elif choice < 0.85:
            sentence = answer.split(". ")[0].strip()
            if 20 < len(sentence) < 200:
                language = rng.choice(TARGET_LANGUAGES)
                conversations.append([{"role": "user", "content": f"Translate to {language}: {sentence}."}])
    return conversations
