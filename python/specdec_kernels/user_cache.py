"""The user's cache folder ($XDG_CACHE_HOME or ~/.cache, then specdec-kernels/) and what its caches share: atomic
writes, and a file's content digest that is remembered by the file's stat instead of being computed each start.

A digest is sha256 over the whole file (~0.15 s for a 100 MB model on this machine), done once per change of the
file. It is remembered with the stat it was taken under (size, mtime, inode, device) and the clock time it was
taken at; it is reused only while the stat is unchanged and the file's mtime lies a margin before that time.
The margin is git's "racily clean" rule: a file written again within one timestamp tick of being hashed can
keep its mtime (Linux file times move in 1-10 ms ticks, FAT's in 2 s), so such a file is hashed again.
"""
import hashlib
import json
import os
import time
from collections.abc import Callable

RACY_NS = 2_000_000_000  # a file modified less than this before it was hashed is hashed again next time


def cache_dir(kind: str) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "specdec-kernels", kind)


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """write(temporary path), then rename it to `path`: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def key_digest(key: dict) -> str:
    """A short name for a cache entry's key (the entry holds the key itself and is used only if it matches)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _stat_of(path: str) -> list:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev]


def hash_file(path: str) -> str:
    digest, buffer = hashlib.sha256(), bytearray(1 << 16)  # a small buffer: hashing costs no memory
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def file_digest(path: str) -> str:
    """sha256 of the file's bytes; hashed only when the file changed since it was last hashed (module docstring)."""
    path = os.path.abspath(path)
    memo_path = os.path.join(cache_dir("digests"), key_digest({"path": path}) + ".json")
    stat = _stat_of(path)
    try:
        with open(memo_path) as f:
            memo = json.load(f)
        if memo["path"] == path and memo["stat"] == stat and stat[1] < memo["hashed_at_ns"] - RACY_NS:
            return str(memo["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or damaged: hash the file
    hashed_at = time.time_ns()
    digest = hash_file(path)
    if _stat_of(path) == stat:  # unchanged while it was read: the digest is this stat's
        memo = {"path": path, "stat": stat, "hashed_at_ns": hashed_at, "sha256": digest}
        write_atomic(memo_path, lambda temporary: _write_json(temporary, memo))
    return digest


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)
