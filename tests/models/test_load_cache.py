"""The loaded-model cache (models.load_cache) and the file digests it is keyed by (user_cache): a cached model is
the built one, bit for bit; a damaged, foreign or stale entry is built again, never used."""
import json
import os
import time

import pytest
import torch
from helpers import write_tiny_gguf
from specdec_kernels import user_cache
from specdec_kernels.decoding import generate
from specdec_kernels.models import gguf_loader, load_cache, load_gguf

OPTIONS = {"max_seq_len": 128, "dense_group_size": None}


@pytest.fixture
def tiny_path(tmp_path, monkeypatch):
    """A tiny GGUF file dated an hour back (a model file is not written just before it is loaded: user_cache's
    racy-timestamp rule would hash it again each time), and a cache folder of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path, perturb=0.0)
    past = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(past, past))
    return path


def entry_of(path: str) -> str:
    key = load_cache.model_key(path, OPTIONS)
    return os.path.join(user_cache.cache_dir("models"), user_cache.key_digest(key))


def forbid_building(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built, not read from its cache entry")
    monkeypatch.setattr(gguf_loader, "model_from", refuse)


def assert_same_model(cached, built):
    """Same modules, buffers, prepacked layouts and logits, bit for bit, and the same greedy tokens."""
    assert [type(m) for m in cached.modules()] == [type(m) for m in built.modules()]
    assert cached.config == built.config
    for (name, a), (_, b) in zip(cached.state_dict().items(), built.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for a, b in zip(cached.modules(), built.modules()):
        for x, y in zip(getattr(a, "packed", None) or [], getattr(b, "packed", None) or []):
            assert torch.equal(x, y)
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert torch.equal(cached(tokens)[0], built(tokens)[0])
    cached.reset(), built.reset()
    assert generate(cached, [3, 1, 4], 12).tokens == generate(built, [3, 1, 4], 12).tokens


def test_the_second_load_reads_the_entry_and_equals_the_built_model(tiny_path, monkeypatch):
    built = load_gguf(tiny_path, max_seq_len=128)  # builds and stores
    assert os.path.exists(entry_of(tiny_path) + ".safetensors")
    forbid_building(monkeypatch)
    cached = load_gguf(tiny_path, max_seq_len=128)
    assert_same_model(cached, built)
    # the KV cache is the model's own (made again), not stored: rows written by one forward are read by the next
    assert cached.k_cache.data_ptr() == cached.layer_caches[0][0].data_ptr()


def test_entry_tensors_are_aligned_and_the_file_is_standard_safetensors(tiny_path):
    """Each mapped tensor starts on a 64-byte line, as a fresh allocation does: torch.mv on an unaligned float32
    weight (the tiny model's dense output layer, on AVX2) gave other bits than on the built model's. The gap
    fillers make no holes, so safetensors' own reader opens the file and sees the same tensors."""
    from safetensors import safe_open

    load_gguf(tiny_path, max_seq_len=128)
    tensors, _ = load_cache.map_safetensors(entry_of(tiny_path) + ".safetensors")
    assert len(tensors) > 10 and all(t.data_ptr() % load_cache.ALIGNMENT == 0 for t in tensors.values())
    with safe_open(entry_of(tiny_path) + ".safetensors", "pt") as f:
        assert set(f.keys()) - set(tensors) == {k for k in f.keys() if k.startswith(load_cache.PADDING)}
        for name, tensor in tensors.items():
            assert torch.equal(f.get_tensor(name), tensor), name


def test_other_options_are_another_entry(tiny_path, monkeypatch):
    load_gguf(tiny_path, max_seq_len=128)
    forbid_building(monkeypatch)
    with pytest.raises(AssertionError, match="was built"):
        load_gguf(tiny_path, max_seq_len=64)


@pytest.mark.parametrize("damage", ["corrupt bytes", "truncated", "index not JSON", "index of another key",
                                    "another model's data"])
def test_a_damaged_or_foreign_entry_is_built_again(tiny_path, tmp_path, damage):
    reference = load_gguf(tiny_path, max_seq_len=128, cache=False)
    load_gguf(tiny_path, max_seq_len=128)
    entry = entry_of(tiny_path)
    data, index = entry + ".safetensors", entry + ".json"
    if damage == "corrupt bytes":  # in the tensors' data, past the header: only the digest can see it
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) - 1000)
            f.write(b"\xff" * 16)
    elif damage == "truncated":
        os.truncate(data, os.path.getsize(data) // 2)
    elif damage == "index not JSON":
        with open(index, "w") as f:
            f.write("{not json")
    elif damage == "index of another key":
        with open(index) as f:
            stored = json.load(f)
        stored["key"]["isa"] = "another CPU path"
        with open(index, "w") as f:
            json.dump(stored, f)
    else:  # a valid entry of another file under this name
        other = str(tmp_path / "other.gguf")
        write_tiny_gguf(other, perturb=0.5)
        load_gguf(other, max_seq_len=128)
        os.replace(entry_of(other) + ".safetensors", data)
    assert load_cache.read_entry(entry, load_cache.model_key(tiny_path, OPTIONS)) is None
    assert_same_model(load_gguf(tiny_path, max_seq_len=128), reference)
    assert load_cache.read_entry(entry, load_cache.model_key(tiny_path, OPTIONS)) is not None  # rewritten


def test_a_changed_model_file_is_built_again(tiny_path, monkeypatch):
    load_gguf(tiny_path, max_seq_len=128)
    write_tiny_gguf(tiny_path, perturb=0.5)  # same size, new weights
    changed = load_gguf(tiny_path, max_seq_len=128)
    assert_same_model(changed, load_gguf(tiny_path, max_seq_len=128, cache=False))


def test_a_class_outside_the_package_is_refused():
    """An entry is restored without running constructors or pickle, and only with the package's classes: a
    manifest naming another (here one whose construction would run code) is refused (read_entry: None, rebuilt)."""
    with pytest.raises(ValueError, match="not a class the model cache restores"):
        load_cache.decode({"module": {"class": "subprocess:Popen"}}, {})
    with pytest.raises(ValueError, match="not a class the model cache restores"):
        load_cache.decode({"dataclass": ["os:system", {}]}, {})


def test_a_module_it_cannot_hold_is_loaded_uncached(tiny_path, monkeypatch, capsys):
    """A module with state the cache has no form for (here a forward hook) is returned as built, and said."""
    original = gguf_loader.model_from

    def hooked(*args):
        model = original(*args)
        model.register_forward_hook(lambda *_: None)
        return model

    monkeypatch.setattr(gguf_loader, "model_from", hooked)
    load_gguf(tiny_path, max_seq_len=128)
    assert "not cached" in capsys.readouterr().err
    assert not os.path.exists(entry_of(tiny_path) + ".safetensors")


def test_a_missing_file_is_the_loaders_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_gguf(str(tmp_path / "absent.gguf"))
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        load_gguf(str(tmp_path))


# ---------------------------------------------------------------- file digests
def count_hashing(monkeypatch) -> list:
    calls = []
    original = user_cache.hash_file
    monkeypatch.setattr(user_cache, "hash_file", lambda path: calls.append(path) or original(path))
    return calls


def test_a_digest_is_remembered_until_the_file_changes(tiny_path, monkeypatch):
    import hashlib

    calls = count_hashing(monkeypatch)
    with open(tiny_path, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    assert user_cache.file_digest(tiny_path) == expected and len(calls) == 1
    assert user_cache.file_digest(tiny_path) == expected and len(calls) == 1  # remembered
    with open(tiny_path, "r+b") as f:  # same size, same inode, new content
        f.seek(100)
        f.write(b"\x00\x01\x02")
    assert user_cache.file_digest(tiny_path) != expected and len(calls) == 2


def test_a_file_written_just_before_hashing_is_hashed_again(tiny_path, monkeypatch):
    """Racy timestamps: a file may be written again within its mtime's tick without the mtime moving, so a digest
    taken within RACY_NS of the mtime is not reused."""
    calls = count_hashing(monkeypatch)
    now = time.time_ns()
    os.utime(tiny_path, ns=(now, now))
    user_cache.file_digest(tiny_path)
    user_cache.file_digest(tiny_path)
    assert len(calls) == 2


def test_an_entry_replaces_the_one_another_build_made(tiny_path, monkeypatch):
    """One entry per file and options: an entry made by other code (a changed loader) is removed when the new
    one is written; another file's, or other options', stays."""
    load_gguf(tiny_path, max_seq_len=128)
    load_gguf(tiny_path, max_seq_len=64)
    old = entry_of(tiny_path)
    monkeypatch.setattr(load_cache, "code_digest", lambda: "another build")
    load_gguf(tiny_path, max_seq_len=128)
    assert not os.path.exists(old + ".safetensors") and not os.path.exists(old + ".json")
    assert os.path.exists(entry_of(tiny_path) + ".safetensors")
    assert len(os.listdir(user_cache.cache_dir("models"))) == 4  # this one's and max_seq_len 64's, two files each
