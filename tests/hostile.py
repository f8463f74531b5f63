"""Damaged copies of a good file and the bounds a refusal must keep, for the hostile-file tests
(tests/models/test_hostile_files.py: GGUF models; tests/drafters/test_hostile_draft_files.py: head files)."""
import random
import signal
import struct
import tracemalloc
from contextlib import contextmanager

SECONDS_PER_LOAD = 10     # a tiny file loads in milliseconds: anything near this is a hang
REFUSAL_PEAK_BYTES = 1 << 20  # Python-heap peak while an absurd count is refused: the header, not the count


def flipped(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << bit % 8
    return bytes(damaged)


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """data with struct-packed values (little-endian fmt, e.g. "<Q") written over it at offset."""
    damaged = bytearray(data)
    struct.pack_into(fmt, damaged, offset, *values)
    return bytes(damaged)


def truncation_lengths(size: int, boundaries: list, step: int = 97) -> list:
    """Prefix lengths below size: a coarse grid over the file, and every length within 40 bytes of a boundary
    (the end of the header, of a tensor) where the first missing byte changes what a reader trips over."""
    near = {n for b in boundaries for n in range(b - 40, b + 41)}
    return sorted(n for n in set(range(0, size, step)) | near if 0 <= n < size)


def each_written(directory, cases):
    """(label, path) for each (label, bytes) case, written to a file of its own and removed once the caller has
    used it (a fresh name, not one file rewritten: truncating a file is ~10x slower on ext4)."""
    for i, (label, data) in enumerate(cases):
        path = directory / f"case{i}"
        path.write_bytes(data)
        yield label, path
        path.unlink()


def flip_bits(seed: int, count: int, start: int, stop: int) -> list:
    """`count` seeded bit positions in bytes [start, stop)."""
    rng = random.Random(seed)
    return sorted(rng.randrange(start * 8, stop * 8) for _ in range(count))


def load_or_refuse(load, path):
    """load(path) under the time limit: what it returns, or None when it refused the file with a ValueError
    naming it. Any other exception propagates."""
    with time_limit():
        try:
            return load(path)
        except ValueError as err:
            assert str(path) in str(err), err
            return None


def outcomes(cases, directory, load, use) -> tuple:
    """load_or_refuse each (label, bytes) case, then use(what loaded) -> (the labels that loaded, what went
    wrong: an exception other than the refusal, from loading or from using what loaded)."""
    loaded, surprises = [], []
    for label, path in each_written(directory, cases):
        try:
            parsed = load_or_refuse(load, path)
            if parsed is not None:
                loaded.append(label)
                use(parsed)
        except Exception as err:  # noqa: BLE001 - the point: collect every kind, report them together
            surprises.append(f"{label}: {type(err).__name__}: {err}")
    return loaded, surprises


@contextmanager
def time_limit(seconds: int = SECONDS_PER_LOAD):
    """TimeoutError inside the block once it has run `seconds` (SIGALRM: the tests run in the main thread)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def peak_below(max_bytes: int = REFUSAL_PEAK_BYTES):
    """Fails when the block's Python-heap peak (tracemalloc; numpy's arrays included) exceeds max_bytes."""
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= max_bytes, f"peak {peak} bytes > {max_bytes}"
