"""Readers of the user's data files: Parquet, JSONL, CSV/TSV and `datasets` folders, streamed as Arrow batches.

Every reader yields record batches with their first 1-based row number, so a check made on a batch
names the row it failed on; failures of the format itself become one-line `DataError`s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from syneg_ray.errors import DataError, MissingExtraError

BATCH_ROWS = 8192  # rows a batch holds at most: memory stays at one batch of texts whatever the file size
KINDS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
         ".csv": "csv", ".tsv": "tsv"}  # fmt: skip
SUPPORTED = "Parquet (.parquet), JSON lines (.jsonl), CSV (.csv), TSV (.tsv) or a folder saved by datasets' save_to_disk"


@dataclass(frozen=True)
class Source:
    """One input file (or `datasets` folder) and its format."""

    path: Path
    kind: str  # parquet | jsonl | csv | tsv | datasets

    def columns(self) -> list[str]:
        """The column names, from the file's schema or header (no data read)."""
        try:
            if self.kind == "parquet":
                return pq.ParquetFile(self.path).schema_arrow.names
            if self.kind == "datasets":
                return _load_dataset(self.path).column_names
            return self._reader([]).schema.names
        except (pa.ArrowException, OSError) as exc:
            if self.kind == "jsonl":
                _locate_json_problem(self, None)
            raise _unreadable(self, exc) from None

    def batches(self, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(first row number, batch of `columns`) over the whole file, BATCH_ROWS rows at most a batch."""
        first = 1
        try:
            for batch in self._batches(columns):
                for start in range(0, batch.num_rows, BATCH_ROWS):
                    part = batch.slice(start, BATCH_ROWS)
                    yield first, part
                    first += part.num_rows
        except (pa.ArrowException, OSError) as exc:
            if self.kind == "jsonl":
                _locate_json_problem(self, columns)
            raise _unreadable(self, exc) from None

    def digest(self) -> str:
        """sha256 of the content (every file of a `datasets` folder, by relative name)."""
        from syneg_ray.dataset import file_digest

        if self.path.is_file():
            return file_digest(self.path)
        parts = [f"{p.relative_to(self.path).as_posix()}:{file_digest(p)}" for p in sorted(self.path.rglob("*")) if p.is_file()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        if self.kind == "parquet":
            # no pre-buffering: it reads ahead whole column chunks (dataset.scan_corpus has the figures)
            yield from pq.ParquetFile(self.path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=columns)
        elif self.kind == "datasets":
            yield from _load_dataset(self.path).data.table.select(columns).to_batches(max_chunksize=BATCH_ROWS)
        else:
            for batch in self._reader(columns):
                yield batch.select(columns)

    def _reader(self, columns: list[str]):  # -> pa.RecordBatchReader
        if self.kind == "jsonl":
            # blocks larger than the default 1 MiB, so a long document is not split across two
            return pjson.open_json(self.path, read_options=pjson.ReadOptions(block_size=1 << 24))
        # every named column read as text: ids stay "007", not 7; lists arrive as JSON text
        return pcsv.open_csv(
            self.path,
            parse_options=pcsv.ParseOptions(delimiter="\t" if self.kind == "tsv" else ",", newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}),
        )


def open_source(path: Path) -> Source:
    """The `Source` of a data file, its format from the suffix (a folder: `datasets`).

    Raises:
        DataError: the path does not exist, or its type is not supported.
    """
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise DataError(f"{path}: a DatasetDict of splits ({', '.join(splits)}); name one split's folder, e.g. {path / splits[0]}"
                            if splits else f"{path}: an empty DatasetDict; name a folder saved by Dataset.save_to_disk")
        if not (path / "state.json").is_file():
            raise DataError(f"{path}: a folder, but not one saved by datasets' save_to_disk (no state.json); give {SUPPORTED}")
        return Source(path, "datasets")
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative paths start from the working directory)")
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; give {SUPPORTED}")
    return Source(path, kind)


def strings(batch: pa.RecordBatch, column: str, source: Source, first: int) -> list[str | None]:
    """A column of ids or texts as Python strings (integers become their decimal text; nulls None).

    Raises:
        DataError: the column holds neither strings nor integers.
    """
    values = batch.column(column)
    if pa.types.is_integer(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type):
        values = values.cast(pa.string())
    if not pa.types.is_string(values.type):
        raise column_error(source, first, column, f"holds {values.type}, not text; give strings (or integer ids)")
    return values.to_pylist()


def column_error(source: Source, row: int, column: str, problem: str) -> DataError:
    """`path: row N, column 'c': problem` (rows 1-based, the header not counted)."""
    return DataError(f"{source.path}: row {row}, column {column!r}: {problem}")


def _unreadable(source: Source, exc: Exception) -> DataError:
    reason = " ".join(str(exc).split())[:300]
    return DataError(f"{source.path}: cannot read as {source.kind} ({reason}); fix the file or convert it to Parquet")


def _locate_json_problem(source: Source, columns: list[str] | None) -> None:
    """After Arrow failed on a JSON lines file: raises the error of the first line that breaks it, if Python finds one.

    Arrow reports a type that changes between rows without the row of the whole file; this finds it.
    `columns` None checks every key.
    """
    seen: dict[str, str] = {}
    with source.path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{source.path}: row {number}: not a JSON object ({exc}); fix or drop the line") from None
            if not isinstance(row, dict):
                raise DataError(f"{source.path}: row {number}: a JSON object per line is expected")
            for column in row if columns is None else columns:
                value = row.get(column)
                kind = "list" if isinstance(value, list) else "text" if isinstance(value, str) else "number" if isinstance(value, int | float) else ""
                if kind and seen.setdefault(column, kind) != kind:
                    what = "not a list" if seen[column] == "list" else f"a {kind} where the rows before hold a {seen[column]}"
                    raise column_error(source, number, column, f"{what}; give every row the same type in this column")


def _load_dataset(path: Path):  # -> datasets.Dataset
    try:
        import datasets
    except ImportError:
        raise MissingExtraError(f"{path}: datasets is not installed, needed to read a folder saved by save_to_disk: "
                                "pip install datasets (or save the data as Parquet)") from None
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load with datasets.load_from_disk ({' '.join(str(exc).split())[:300]})") from None
