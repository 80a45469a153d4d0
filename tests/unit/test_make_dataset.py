"""tests/make_dataset.py writes a valid BEIR folder with the properties SciFact lacks, and a qrels
grade that is not an integer fails on one line naming file and line."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from syneg_ray import beir
from syneg_ray.errors import DataError
from tests.make_dataset import make_dataset
from tests.unit.test_beir import QRELS, write_folder

REPO = Path(__file__).resolve().parents[2]


def test_the_generated_folder_has_many_graded_positives_and_a_dev_split(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "g", docs=300, queries=20, positives=(30, 40), seed=1)
    corpus = beir.read_corpus(folder)
    assert len(corpus) == 300
    for split, n_queries in (("train", 20), ("dev", 2), ("test", 2)):
        s = beir.load_split(folder, split, corpus=corpus)  # every qrels row names a known query and document
        assert len(s.qrels) == n_queries
        assert all(30 <= len(docs) <= 40 for docs in s.qrels.values())
        assert set(Counter(g for docs in s.qrels.values() for g in docs.values())) == {1, 2}
    assert make_dataset(tmp_path / "again", docs=300, queries=20, positives=(30, 40), seed=1).joinpath("qrels", "train.tsv")\
        .read_bytes() == (folder / "qrels" / "train.tsv").read_bytes()  # fmt: skip


def test_the_script_runs_from_the_command_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "tests" / "make_dataset.py"), str(tmp_path / "cli"), "--docs", "100",
                          "--queries", "5", "--positives", "30..45"], capture_output=True, text=True, check=True)  # fmt: skip
    assert "100 documents, 5 train queries" in out.stdout
    qrels, _ = beir.read_qrels(tmp_path / "cli", "train")
    assert len(qrels) == 5 and min(map(len, qrels.values())) >= 30


@pytest.mark.parametrize(("qrels", "where"), [
    (QRELS + "q1\td2\t1.5\r\n", r"train\.tsv:5: score '1\.5' is not an integer"),
    (QRELS + "q1\td2\thigh\r\n", r"train\.tsv:5: score 'high' is not an integer"),
    ("q1\td1\t0.5\r\nq2\td2\t1\r\n", r"train\.tsv:1: score '0\.5' is not an integer"),  # no header: line 1 is a row
])  # fmt: skip
def test_a_grade_that_is_not_an_integer_is_one_line_naming_file_and_line(tmp_path: Path, qrels: str, where: str) -> None:
    folder = write_folder(tmp_path, qrels=qrels)
    with pytest.raises(DataError, match=where) as info:
        beir.read_qrels(folder, "train")
    assert "\n" not in str(info.value)
