"""The ablation table of benchmarks/quality.py: aggregation over seeds and the delta column."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _result(out: Path, row: str, seed: int, ndcg: float, **extra) -> None:
    folder = out / "rows" / row / f"seed{seed}"
    folder.mkdir(parents=True)
    record = {"row": row, "label": row, "seed": seed, "command": f"cmd {row} {seed}",
              "test": {"ndcg@10": ndcg, "recall@100": 0.9}, **extra}
    (folder / "result.json").write_text(json.dumps(record))


def test_table_means_seeds_and_measures_against_base(tmp_path, quality) -> None:
    _result(tmp_path, "base", 0, 0.60)
    _result(tmp_path, "hybrid", 0, 0.64, mix={"instances": 700, "realized_ratio": 0.667}, grad_var={"mean": 10.0})
    _result(tmp_path, "hybrid", 1, 0.66, mix={"instances": 700, "realized_ratio": 0.667}, grad_var={"mean": 20.0})
    table = quality.write_table(tmp_path, ["base", "hybrid"])
    base_line, hybrid_line = [line for line in table.splitlines() if line.startswith(("| base", "| hybrid"))]
    assert "| 1 | 0.6000 |  |" in base_line
    assert "| 2 | 0.6500 ± 0.0141 | +5.00 |" in hybrid_line
    assert "| 700 | 0.667 | 15.0 |" in hybrid_line
    assert "`cmd hybrid 1`" in table
    assert (tmp_path / "table.md").read_text().strip() == table.strip()
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_rows_resume_only_for_the_same_fingerprint(tmp_path, quality) -> None:
    path = tmp_path / "result.json"
    quality.write_record(path, {"fingerprint": "abc", "x": 1})
    assert quality.done(path, "abc") == {"fingerprint": "abc", "x": 1}
    assert quality.done(path, "other") is None
    assert quality.done(tmp_path / "missing.json", "abc") is None


def test_a_row_left_with_less_than_a_batch_is_reported_not_scored(tmp_path, quality) -> None:
    _result(tmp_path, "base", 0, 0.60)
    folder = tmp_path / "rows" / "synthetic" / "seed0"
    folder.mkdir(parents=True)
    reason = "mix/instances.parquet: 11 instances, fewer than one global batch"
    (folder / "result.json").write_text(json.dumps({"row": "synthetic", "label": "synthetic-only", "seed": 0, "command": "c",
                                                    "mix": {"instances": 11, "realized_ratio": 1.0}, "not_trained": reason}))
    table = quality.write_table(tmp_path, ["base", "synthetic"])
    line = next(line for line in table.splitlines() if line.startswith("| synthetic-only"))
    assert "not trained" in line and "| 11 | 1.000 |" in line
    assert reason in table
    assert (tmp_path / "quality.png").stat().st_size > 0  # plotted without the unscored row


def test_each_synthesis_has_its_own_folder_and_settings(tmp_path, quality) -> None:
    import argparse

    args = argparse.Namespace(out=tmp_path, config=str(quality.CONFIG), data_dir=None, overrides=[])
    folders = {name: quality.synthesis_dir(tmp_path, name) for name in quality.SYNTHESES}
    assert len(set(folders.values())) == len(folders)  # no two syntheses resume each other's attempts
    settings = {name: quality.config_for(args, folders[name], overrides).synthesize
                for name, overrides in quality.SYNTHESES.items()}  # fmt: skip
    assert [settings[n].judge for n in ("plain", "judge", "judge-reflect", "syneg")] == [False, True, True, True]
    assert [settings[n].reflect_rounds for n in ("judge", "judge-reflect", "syneg")] == [0, 1, 1]
    assert [settings[n].style_reference for n in ("judge-reflect", "syneg")] == [False, True]
    rows = {row.name: row for row in quality.ROWS}
    assert rows["syneg"].synthesis == "syneg" and rows["hybrid-guard"].synthesis == "plain"


def test_probe_lines_name_their_synthesis(tmp_path, quality) -> None:
    _result(tmp_path, "base", 0, 0.60)
    probe = {"guard_share_strict": 0.05, "guard_share_margin": 0.08, "relative_margin": 0.05, "source_auc": 0.8,
             "source_auc_std": 0.01, "synthetic_negatives": 300, "retrieved_negatives": 290}  # fmt: skip
    quality.write_record(quality.probes_path(tmp_path, "syneg"), probe)
    table = quality.write_table(tmp_path, ["base"])
    assert "LLM negatives `syneg`: the false-negative guard flags 5.0%" in table
    assert "`plain`" not in table  # no probe was written for it


def test_a_finished_synthesis_says_what_it_kept_and_its_cost(tmp_path, quality) -> None:
    _result(tmp_path, "base", 0, 0.60)
    _result(tmp_path, "syneg", 0, 0.62, mix={"instances": 120, "realized_ratio": 0.41, "realized_ratio_with_synthetic": 0.68,
                                              "with_synthetic": 80})  # fmt: skip
    folder = quality.synthesis_dir(tmp_path, "syneg")
    (folder / "synthesize").mkdir(parents=True)
    (folder / "config.yaml").write_text("synthesize:\n  model: qwen2.5-coder-1.5b\n")
    summary = {"pairs": 128, "ok": 90, "negatives": 240, "output_tokens_per_kept": 1432.4, "seconds_per_kept": 61.25}
    quality.write_record(folder / "synthesize" / "_COMPLETE.json", {"fingerprint": "x", "summary": summary})
    table = quality.write_table(tmp_path, ["base", "syneg"])
    assert "| 120 | 0.410 (0.680) |" in table  # realized R, and over the instances holding synthetic negatives
    assert ("LLM negatives `syneg` (qwen2.5-coder-1.5b): 90 of 128 pairs keep a negative, 240 negatives; 1,432 output tokens "
            "a kept negative (every attempt and round counted), 61.2 s.") in table
    assert "`judge` (" not in table  # not finished: no line


def test_each_row_keeps_its_result_under_the_pipelines_fingerprint_of_what_it_reads(tmp_path, quality) -> None:
    import argparse

    def keys(*overrides: str) -> dict[str, str]:
        args = argparse.Namespace(out=tmp_path, config=str(quality.CONFIG), data_dir=None, overrides=list(overrides))
        return {row.name: quality.row_key(quality.row_config(args, row, 0), row) for row in quality.ROWS}

    base = keys()
    assert len(set(base.values())) == len(base)  # no two rows share a key
    hotter = keys("train.temperature=0.1")
    assert hotter["base"] == base["base"]  # the untrained model does not depend on training
    assert all(hotter[name] != base[name] for name in base if name != "base")
    llm = keys("synthesize.temperature=0.2")  # what the LLM's rows read, not the retrieved rows
    assert [name for name in base if llm[name] != base[name]] == [r.name for r in quality.ROWS if r.synthetic]


def test_a_tuned_row_names_its_point_and_the_command_that_gives_it(quality) -> None:
    import argparse

    rows = {row.name: row for row in quality.ROWS}
    hybrid = quality.at_point(rows["hybrid"], 0.5)
    assert hybrid.name == "hybrid-R0.5" and "mix.ratio=0.5" in hybrid.overrides and "mix.ratio=0.7" not in hybrid.overrides
    assert hybrid.label == "hybrid, R = 0.5 (Tune's best)"
    syneg = quality.at_point(rows["syneg"], 0.25, 0.02)
    assert syneg.name == "syneg-R0.25-tau0.02" and syneg.overrides[-2:] == ("mix.ratio=0.25", "train.temperature=0.02")
    assert syneg.label.endswith(", R = 0.25, tau = 0.02 (Tune's best)")  # a label without "R = 0.7" gains the point
    args = argparse.Namespace(out=Path("runs/quality"), data_dir=None, overrides=[], tune_tau=[0.01, 0.05], tune_points=3)
    assert quality.command(args, hybrid, 0).endswith("--best-ratio 0.5")
    assert quality.command(args, syneg, 1).endswith("--seeds 1 --tune syneg --tune-tau 0.01 0.05 --tune-points 3")
    tuned_hybrid = quality.at_point(rows["hybrid"], 0.5, 0.01)
    assert "--tune hybrid --tune-tau" in quality.command(args, tuned_hybrid, 0)  # not --best-ratio, which holds tau


def test_tunes_dev_split_keeps_the_rows_pairs_and_adds_the_queries_they_leave(tmp_path, quality, scifact) -> None:
    import argparse

    import pyarrow.parquet as pq

    from syneg_ray import schema
    from syneg_ray.dataset import ensure_pairs

    args = argparse.Namespace(out=tmp_path, config=str(quality.CONFIG), data_dir=str(scifact.parent), overrides=[])
    rows = quality.config_for(args, tmp_path / "shared")
    tune = quality.config_for(args, tmp_path / "tune", quality.TUNE_DEV)

    def pairs_and_dev(cfg):
        _, path = ensure_pairs(cfg)
        dev = json.loads((Path(cfg.run.run_dir) / schema.DEV_QRELS).read_text(encoding="utf-8"))
        return pq.read_table(path, columns=["query_id", "positive_id"]).to_pylist(), dev

    pairs, carved = pairs_and_dev(rows)
    same, dev = pairs_and_dev(tune)
    assert same == pairs and len(pairs) == 128
    used = {p["query_id"] for p in pairs}
    assert set(carved) < set(dev) and not used & set(dev)
    assert len(carved) == 81 and len(dev) == 809 - len(used)  # every SciFact train query not trained on
    assert tune.train.dev_max_docs == 0  # scored over the whole corpus, as test is


def test_a_tune_run_trains_only_its_tuned_rows_unless_rows_are_named(quality) -> None:
    tuned = quality.at_point(quality.TUNABLE["syneg"], 0.0, 0.05)
    rows = [*quality.ROWS, tuned]
    assert quality.rows_to_train(rows, None) == [tuned]
    assert quality.rows_to_train(rows, ["base", tuned.name]) == [rows[0], tuned]
    assert quality.rows_to_train(list(quality.ROWS), None) == list(quality.ROWS)


def test_the_gain_splits_by_what_training_holds_of_a_test_querys_relevant_documents(tmp_path, quality) -> None:
    import argparse

    import pyarrow as pa
    import pyarrow.parquet as pq

    qrels = tmp_path / "data" / "scifact" / "qrels"
    qrels.mkdir(parents=True)
    (qrels.parent / "corpus.jsonl").touch()  # what marks a BEIR folder; the split reads only the qrels
    (qrels / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")

    def rows_run(folder: Path, ranks: dict[str, list[str]]) -> None:
        (folder / "evaluate" / "m-test").mkdir(parents=True)
        lines = [f"{q} Q0 {d} {i + 1} {1.0 - i / 10:.2f} m" for q, docs in ranks.items() for i, d in enumerate(docs)]
        (folder / "evaluate" / "m-test" / "run.trec").write_text("\n".join(lines) + "\n")

    rows_run(tmp_path / "rows" / "base" / "seed0", {"q1": ["x", "d1"], "q2": ["x", "d2"], "q3": ["x", "d3"]})
    trained = tmp_path / "rows" / "dense" / "seed0"
    rows_run(trained, {"q1": ["d1", "x"], "q2": ["x", "y", "d2"], "q3": ["x", "d3"]})  # q1 up, q2 down, q3 the same
    (trained / "mix").mkdir()
    pq.write_table(pa.table({"positive_id": ["d1"], "negative_ids": [["d2", "z"]]}), trained / "mix" / "instances.parquet")
    args = argparse.Namespace(out=tmp_path, data_dir=str(tmp_path / "data"), config=str(quality.CONFIG), overrides=[])
    line = quality.gain_by_overlap(args, ["dense"]).splitlines()[-1]
    up, down = 100 * (1 - 1 / math.log2(3)), 100 * (1 / math.log2(4) - 1 / math.log2(3))
    assert line == (f"| dense | 1 | {up:+.2f} (1) | {down:+.2f} (1) | +0.00 (1) | {(up + down) / 3:+.2f} | "
                    f"{up / (up + down):.0%} |")  # fmt: skip
    assert (tmp_path / "overlap.md").read_text().strip().endswith(line)
