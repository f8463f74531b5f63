"""A corpus of the target's own answers for training draft heads: token ids only, in uint16 shards of a few MB that
the repo keeps (features are recomputed by batched prefill when a head trains). EAGLE-3 wants about ten times the
329k answer tokens the EAGLE-1/2 head learned from; that takes hours on a 2-core CPU, so generation is resumable:
every shard names the conversations it holds, and a rerun skips them.

    python -m specdec_kernels.train.corpus --out DIR [--model PATH] [--seeds 0,1,2,3] [--batch-size 32]
        [--max-new-tokens 256] [--shard-tokens 1000000] [--minutes M]

The conversations are train/prompts.py's first round under several seeds (each seed samples other topic prompts,
coding tasks and numbers), without the end-to-end prompts' questions; answers are greedy, as decoding's are.
"""
import argparse
import glob
import hashlib
import os
import time
from typing import Callable, Iterable, List, Optional

import torch

from specdec_kernels.extras import optional_imports, progress_bar

from .eagle import generate_batch
from .prompts import round_one

SHARD_VERSION = "1"
MAX_TOKEN_ID = 2 ** 16 - 1  # ids are stored as uint16


def conversation_key(messages: list) -> int:
    """A conversation's stable id (its text's hash, as int64): a rerun knows what is done even if recipes grew."""
    text = "\x00".join(f"{m['role']}\x01{m['content']}" for m in messages)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


def corpus_conversations(seeds: Iterable[int], exclude=()) -> list:
    """Round one of train/prompts.py under each seed, all topic prompts each time, duplicates dropped, in order."""
    from .prompts import RECIPES

    seen, conversations = set(), []
    for seed in seeds:
        every_topic_prompt = len(RECIPES.topics) * len(RECIPES.single_turn)
        for messages in round_one(seed=seed, topic_prompts=every_topic_prompt, exclude=exclude):
            key = conversation_key(messages)
            if key not in seen:
                seen.add(key)
                conversations.append(messages)
    return conversations


# ---------------------------------------------------------------- shards
def write_shard(path: str, sequences: List[torch.Tensor], answer_starts: List[int], keys: List[int], model: str):
    with optional_imports():
        from safetensors.torch import save_file
    tokens = torch.cat(sequences)
    if tokens.numel() and (tokens.min() < 0 or tokens.max() > MAX_TOKEN_ID):
        raise ValueError(f"token ids must fit uint16 (0..{MAX_TOKEN_ID}) to be stored in a shard")
    tensors = {"tokens": tokens.to(torch.uint16), "lengths": torch.tensor([s.numel() for s in sequences], dtype=torch.int32),
               "answer_start": torch.tensor(answer_starts, dtype=torch.int32),
               "conversation": torch.tensor(keys, dtype=torch.int64)}
    partial = path + ".partial"
    save_file(tensors, partial, metadata={"version": SHARD_VERSION, "model": model})
    os.replace(partial, path)  # a shard is whole or absent, whenever generation stops


def read_shard(path: str):
    """-> (sequences int64 [n_i], answer starts, conversation keys, model name); a damaged or foreign shard is a
    ValueError naming it."""
    with optional_imports():
        from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, "pt") as shard:
            metadata = shard.metadata() or {}
            saved = {name: shard.get_tensor(name) for name in ("tokens", "lengths", "answer_start", "conversation")}
        if metadata.get("version") != SHARD_VERSION:
            raise ValueError(f"version {metadata.get('version')!r}, expected {SHARD_VERSION!r}")
        lengths, starts = saved["lengths"].long(), saved["answer_start"].long()
        if saved["tokens"].dtype != torch.uint16 or not (lengths.numel() == starts.numel() ==
                                                         saved["conversation"].numel()):
            raise ValueError("its tensors do not fit together")
        if (lengths < 1).any() or (starts < 1).any() or (starts > lengths).any() or lengths.sum() != saved["tokens"].numel():
            raise ValueError("its lengths and answer starts do not fit its tokens")
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a corpus shard ({err})") from err
    sequences = list(saved["tokens"].long().split(lengths.tolist()))
    return sequences, starts.tolist(), saved["conversation"].tolist(), metadata.get("model", "")


def shard_paths(folder: str) -> list:
    return sorted(glob.glob(os.path.join(folder, "shard_*.safetensors")))


def read_corpus(folder: str):
    """Every shard of `folder` -> (sequences, answer starts, conversation keys)."""
    sequences, starts, keys = [], [], []
    for path in shard_paths(folder):
        s, a, k, _ = read_shard(path)
        sequences += s
        starts += a
        keys += k
    return sequences, starts, keys


# ---------------------------------------------------------------- generation
def generate_corpus(model, encode: Callable[[list], list], conversations: list, folder: str, model_name: str,
                    batch_size: int = 32, max_new_tokens: int = 256, stop_tokens=(), shard_tokens: int = 1_000_000,
                    deadline: Optional[float] = None) -> int:
    """Answers the conversations not yet in `folder`'s shards, writing a shard whenever shard_tokens gather and when
    it stops (all done, or time.monotonic() past `deadline`). -> the number of conversations answered now."""
    os.makedirs(folder, exist_ok=True)
    done = set(read_corpus(folder)[2])
    pending = [(encode(m), conversation_key(m)) for m in conversations if conversation_key(m) not in done]
    pending.sort(key=lambda item: len(item[0]))  # batches of like lengths pad little
    next_shard = len(shard_paths(folder))
    sequences, starts, keys, answered = [], [], [], 0

    def flush():
        nonlocal next_shard, sequences, starts, keys
        if sequences:
            write_shard(os.path.join(folder, f"shard_{next_shard:04d}.safetensors"), sequences, starts, keys,
                        model_name)
            next_shard += 1
            sequences, starts, keys = [], [], []

    for i in progress_bar(range(0, len(pending), batch_size), desc="corpus"):
        if deadline is not None and time.monotonic() > deadline:
            break
        chunk = pending[i: i + batch_size]
        for (ids, key), seq in zip(chunk, generate_batch(model, [ids for ids, _ in chunk], max_new_tokens, stop_tokens)):
            sequences.append(seq.tokens)
            starts.append(seq.answer_start)
            keys.append(key)
        answered += len(chunk)
        if sum(s.numel() for s in sequences) >= shard_tokens:
            flush()
    flush()
    return answered


def main(argv=None):
    from specdec_kernels.bench.e2e import first_turns
    from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer
    from specdec_kernels.models import embedded_model_path, load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the shard folder (created; shards already there are kept)")
    parser.add_argument("--model", default=None, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--seeds", default="0,1,2,3", help="train/prompts.py round-one seeds")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--shard-tokens", type=int, default=1_000_000, help="tokens per shard (2 bytes each)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long (rerun to go on)")
    args = parser.parse_args(argv)
    path = args.model or embedded_model_path()
    model, tokenizer = load_model(path), load_tokenizer(path)
    conversations = corpus_conversations([int(s) for s in args.seeds.split(",")], exclude=first_turns())
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    start = time.monotonic()
    answered = generate_corpus(model, lambda m: chat_prompt_ids(tokenizer, m), conversations, args.out,
                               os.path.basename(path), args.batch_size, args.max_new_tokens, [tokenizer.eos_token_id],
                               args.shard_tokens, deadline)
    sequences, starts, keys = read_corpus(args.out)
    answer_tokens = sum(s.numel() - a for s, a in zip(sequences, starts))
    print(f"answered {answered} conversations in {time.monotonic() - start:.0f} s; the corpus holds {len(keys)} of "
          f"{len(conversations)}, {answer_tokens} answer tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
