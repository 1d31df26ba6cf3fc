"""Execution's memory stays bounded however many orders it has handled.

``DigestSet``: every client order id (and every fill id) execution has seen, as 8-byte digests in a
sorted numpy array plus a small set of recent ones merged in by the thousand: about 8 bytes per id,
so a million orders cost ~8 MB where a set of strings costs ~100 MB. Membership is exact for ids
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
    MERGE_AT = 4096

    def __init__(self):
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set = set()

    def add(self, s: str):
        self._recent.add(digest(s))
        if len(self._recent) >= self.MERGE_AT:
            self._merge()

    def _merge(self):
        fresh = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        self._sorted = np.union1d(self._sorted, fresh)
        self._recent = set()

    def __contains__(self, s: str) -> bool:
        d = digest(s)
        if d in self._recent:
            return True
        a = self._sorted
        i = int(np.searchsorted(a, np.uint64(d)))
        return i < len(a) and int(a[i]) == d

    def __len__(self):
        return len(self._sorted) + len(self._recent)

    @property
    def nbytes(self) -> int:
        return self._sorted.nbytes + 72 * len(self._recent)


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
