"""Random access to the corpus's texts by row: the texts back to back in one file, and their offsets.

The corpus Parquet is read a row group at a time. A stage that needs a few thousand texts scattered
over the corpus (mix: the chosen negatives of a block of pairs) would read every row group for
them, so each block would cost as much as the corpus; the store answers a row with one read.

Layout, little-endian:  the UTF-8 texts | offsets, int64 x (n + 1) | n, int64 | MAGIC
The offsets are memory-mapped (8 bytes a document, file-backed pages the OS may drop); the texts
are read with `os.pread`, so nothing corpus-sized is allocated by the reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAGIC = b"SYNEGDS1"
_TRAILER = 16  # n and MAGIC


def write(batches: Iterable[list[str]], target: Path) -> int:
    """Writes the texts of `batches` (in corpus order) as a store at `target`; returns the count.

    Holds one batch's texts and the offsets (8 bytes a document) while writing.
    """
    lengths = [np.zeros(1, dtype=np.int64)]  # a leading 0, then each batch's byte lengths
    with open(target, "wb") as out:
        for texts in batches:
            encoded = [t.encode("utf-8") for t in texts]
            out.write(b"".join(encoded))
            lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        offsets = np.cumsum(np.concatenate(lengths), dtype=np.int64)
        out.write(offsets.astype("<i8").tobytes())
        out.write(np.int64(len(offsets) - 1).astype("<i8").tobytes() + MAGIC)
    return len(offsets) - 1


class DocStore:
    """The texts of a store written by `write`, by corpus row.

    Example:
        >>> store = DocStore(path)
        >>> store.texts([17, 3])  # the texts of corpus rows 17 and 3, in that order
        ['...', '...']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        trailer = os.pread(self._fd, _TRAILER, size - _TRAILER) if size >= _TRAILER else b""
        if trailer[8:] != MAGIC:
            self.close()
            raise ValueError(f"{self.path}: not a text store (no trailer); delete it to have it rebuilt")
        self.n = int(np.frombuffer(trailer[:8], dtype="<i8")[0])
        self._offsets = np.memmap(self.path, dtype="<i8", mode="r", offset=size - _TRAILER - 8 * (self.n + 1),
                                  shape=(self.n + 1,))  # fmt: skip

    def __len__(self) -> int:
        return self.n

    def texts(self, rows: Iterable[int]) -> list[str]:
        """The texts of corpus `rows`, in the order given; read in file order, so the OS reads ahead."""
        rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"{self.path}: row out of range [0, {self.n})")
        starts, ends = self._offsets[rows], self._offsets[rows + 1]
        out: list[str] = [""] * len(rows)
        for i in np.argsort(starts, kind="stable").tolist():
            out[i] = os.pread(self._fd, int(ends[i] - starts[i]), int(starts[i])).decode("utf-8")
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.__dict__.pop("_offsets", None)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()
