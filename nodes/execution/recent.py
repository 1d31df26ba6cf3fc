"""Execution's memory stays bounded however many orders it has handled.

``DigestSet``: every client order id (and every fill id) execution has seen, as 8-byte digests in
sorted numpy chunks plus a small set of recent ones: about 8 bytes per id, so a million orders cost
~8 MB where a set of strings costs ~100 MB. Membership is exact for ids
seen (no false negative); a false positive (two ids with the same 64-bit digest: about 1 in 10^13
for a million ids) is resolved by the caller against the journal.

``Finished``: finished orders stay in memory, most recent last, up to a limit (queries, exact
duplicate answers); older ones leave memory once journaled. A duplicate of one of those is
answered from the journal (``journal.read_records``), which is rare and allowed to be slow.
"""
import collections
import hashlib

import numpy as np


def digest(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class DigestSet:
    """Sorted uint64 chunks that are never reallocated: a small set of recent digests becomes a
    sorted chunk of ``SMALL`` entries; ``SMALL_PER_BIG`` of those are merged into one chunk of their
    sum, kept for good. Growing one array instead (union with each batch) reallocated ever larger
    arrays, and the allocator's heap grew ~70 bytes per id with them (measured: RSS +48% over a
    million orders); fixed sizes are reused."""
    SMALL = 4096
    SMALL_PER_BIG = 16

    def __init__(self):
        self._big: list = []
        self._small: list = []
        self._recent: set = set()
        self._n = 0

    def add(self, s, new: bool = False):
        """Add an id (or its ``digest``); ``new``: the caller just found it absent (``in``), so
        it is not looked up again."""
        d = s if type(s) is int else digest(s)
        if not new and d in self:
            return
        self._recent.add(d)
        self._n += 1
        if len(self._recent) >= self.SMALL:
            a = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            a.sort()
            self._small.append(a)
            self._recent = set()
            if len(self._small) >= self.SMALL_PER_BIG:
                big = np.concatenate(self._small)
                big.sort()
                self._big.append(big)
                self._small = []

    def __contains__(self, s) -> bool:
        d = s if type(s) is int else digest(s)
        if d in self._recent:
            return True
        u = np.uint64(d)
        for a in self._small:
            i = int(a.searchsorted(u))
            if i < len(a) and int(a[i]) == d:
                return True
        for a in self._big:
            i = int(a.searchsorted(u))
            if i < len(a) and int(a[i]) == d:
                return True
        return False

    def __len__(self):
        return self._n

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._big + self._small) + 72 * len(self._recent)


class Finished:
    """Client order ids of finished orders still held in memory, oldest first."""

    def __init__(self, limit: int):
        self.limit = limit
        self._q = collections.OrderedDict()

    def add(self, coid: str) -> list:
        """Record ``coid`` as finished; returns the ids that must now leave memory."""
        self._q[coid] = None
        self._q.move_to_end(coid)
        out = []
        while len(self._q) > self.limit:
            out.append(self._q.popitem(last=False)[0])
        return out

    def __len__(self):
        return len(self._q)
