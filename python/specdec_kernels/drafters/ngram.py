"""Prompt lookup: draft the tokens that followed the latest earlier occurrence of the longest suffix of the
committed sequence (prompt and output). No model and a few microseconds a step; it pays where answers copy
their context (summaries, rewrites, answers over a passage, code edits). `speculative_generate(...,
lookup=NgramLookup())` grafts its chain into the EAGLE-2 tree, so the target verifies both in one forward.

How long a chain is worth verifying depends on the match: a 9-token match is usually followed by what
followed it before, a 1-token match rarely is, unless the head's own top-1 child is the chain's first token.
The lengths below are, per (match length, does the head's top-1 child agree), the largest depth d at which
P(the chain's first d tokens are all accepted) >= 0.2: a verified node costs about a fifth of what an accepted
token saves on the CPUs measured, so a node accepted less often slows decoding (calibration: docs/notes.md,
"prompt lookup").
"""
from bisect import bisect_right

from specdec_kernels import tree

MATCH_BUCKETS = (1, 2, 3, 4, 6, 9)  # lower bounds of the match-length buckets: 1, 2, 3, 4-5, 6-8, >= 9
LENGTH_IF_HEAD_AGREES = (4, 4, 9, 13, 13, 13)
LENGTH_OTHERWISE = (0, 2, 2, 3, 5, 15)


class NgramLookup:
    """The committed sequence with an index of its n-grams (n <= max_ngram) -> their latest occurrence."""

    def __init__(self, max_ngram: int = MATCH_BUCKETS[-1], if_head_agrees=LENGTH_IF_HEAD_AGREES,
                 otherwise=LENGTH_OTHERWISE):
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be at least 1, got {max_ngram}")
        if not len(if_head_agrees) == len(otherwise) == len(MATCH_BUCKETS):
            raise ValueError(f"chain lengths take one entry per match bucket {MATCH_BUCKETS}, got "
                             f"{len(if_head_agrees)} and {len(otherwise)}")
        self.max_ngram, self.if_head_agrees, self.otherwise = max_ngram, if_head_agrees, otherwise
        self.longest = max(max(if_head_agrees), max(otherwise))
        self.reset()

    def reset(self):
        self.sequence = []
        self._next = {}  # n-gram tuple -> index just after its latest occurrence that has a successor

    def extend(self, tokens) -> None:
        """Append committed tokens (ints)."""
        seq = self.sequence
        for token in tokens:
            end = len(seq)  # the n-grams ending just before `end` gain a successor: token
            for n in range(1, min(self.max_ngram, end) + 1):
                self._next[tuple(seq[end - n: end])] = end
            seq.append(token)

    def propose(self, max_length: int):
        """-> (up to max_length tokens that followed the latest earlier occurrence of the longest suffix of at
        most max_ngram tokens, that suffix's length), or ([], 0) when no suffix occurred before."""
        seq = self.sequence
        for n in range(min(self.max_ngram, len(seq)), 0, -1):
            start = self._next.get(tuple(seq[-n:]))
            if start is not None:
                return seq[start: start + max_length], n
        return [], 0

    def chain_length(self, match: int, head_agrees: bool) -> int:
        """How many lookup tokens to verify after a match of `match` tokens."""
        bucket = bisect_right(MATCH_BUCKETS, match) - 1
        return (self.if_head_agrees if head_agrees else self.otherwise)[bucket]

    def graft(self, draft: tree.DraftTree, max_nodes: int) -> tree.DraftTree:
        """The draft (one tree) with the lookup chain grafted below its root (tree.graft_chain); the head agrees
        when the chain's first token is node 1, the drafter's top-1 child (EagleDrafter's first candidate)."""
        chain, match = self.propose(self.longest)
        if not chain:
            return draft
        agrees = draft.tokens.shape[1] > 1 and int(draft.tokens[0, 1]) == chain[0]
        return tree.graft_chain(draft, chain[: self.chain_length(match, agrees)], max_nodes)
