"""The answer corpus (train/corpus.py): a stopped and resumed generation holds what one uninterrupted run holds, shards
store uint16 ids whole or not at all, and a damaged shard is refused by name."""
import os
import time

import pytest
import torch
from helpers import write_tiny_gguf
from specdec_kernels.models import load_model
from specdec_kernels.train.corpus import conversation_key, generate_corpus, read_corpus, read_shard, write_shard

CONVERSATIONS = [[{"role": "user", "content": f"question {i} " + "why " * (i % 4)}] for i in range(7)]


def encode(messages) -> list:
    return [1 + ord(c) % 37 for c in messages[-1]["content"]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("corpus") / "tiny.gguf")
    write_tiny_gguf(path)
    return load_model(path)


def by_key(folder) -> dict:
    sequences, starts, keys = read_corpus(folder)
    return {key: (tokens.tolist(), start) for tokens, start, key in zip(sequences, starts, keys)}


def test_resumed_corpus_equals_one_run(tiny_model, tmp_path):
    options = dict(batch_size=3, max_new_tokens=6, shard_tokens=40)
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    assert generate_corpus(tiny_model, encode, CONVERSATIONS, whole, "tiny", **options) == 7
    assert generate_corpus(tiny_model, encode, CONVERSATIONS[:4], resumed, "tiny", **options) == 4  # stopped early
    assert generate_corpus(tiny_model, encode, CONVERSATIONS, resumed, "tiny", **options) == 3  # only the rest
    assert generate_corpus(tiny_model, encode, CONVERSATIONS, resumed, "tiny", **options) == 0
    assert by_key(resumed) == by_key(whole)  # other batches, same answers: rows are decoded independently
    prompts = {conversation_key(m): encode(m) for m in CONVERSATIONS}
    assert set(by_key(whole)) == set(prompts)
    for key, (tokens, start) in by_key(whole).items():
        assert tokens[:start] == prompts[key] and 0 < len(tokens) - start <= 6  # prompt, then at most 6 new
    assert len(os.listdir(resumed)) >= 2


def test_past_the_deadline_nothing_is_written(tiny_model, tmp_path):
    folder = str(tmp_path / "late")
    assert generate_corpus(tiny_model, encode, CONVERSATIONS, folder, "tiny", deadline=time.monotonic() - 1) == 0
    assert os.listdir(folder) == []


def test_shards_hold_uint16_ids_and_refuse_damage(tmp_path):
    path = str(tmp_path / "shard_0000.safetensors")
    write_shard(path, [torch.tensor([5, 65535, 7]), torch.tensor([1, 2])], [1, 1], [11, 12], "m")
    sequences, starts, keys, model = read_shard(path)
    assert [s.tolist() for s in sequences] == [[5, 65535, 7], [1, 2]] and keys == [11, 12] and model == "m"
    with pytest.raises(ValueError, match="uint16"):
        write_shard(path, [torch.tensor([65536])], [1], [1], "m")
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff" * 16)
    with pytest.raises(ValueError, match="is not a corpus shard"):
        read_shard(path)
