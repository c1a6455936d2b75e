"""``protpeft predict NAME@alias`` on one machine (the console script in a subprocess) and as Ray tasks (``--ray``,
the input split into chunks, one task each, on the session's local Ray instance), for pairs and sequences: the TSV
holds one row per input, in input order, with the probabilities the registered model gives offline."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["registry_fixtures"]  # stores, tiny trained runs

pytestmark = pytest.mark.integration

PROTPEFT = str(Path(sys.executable).with_name("protpeft"))
N_PAIRS = 40


def run_predict(*args: str) -> subprocess.CompletedProcess:
    # One torch thread, as Ray gives a 1-CPU task: two threads on two busy cores are many times slower.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([PROTPEFT, "predict", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return rows[0], rows[1:]


def predict_on_ray(*args: str) -> str:
    """``protpeft predict ... --ray`` in this process (Ray tasks on the session's instance, workers reused)."""
    from typer.testing import CliRunner

    from protpeft.cli import app

    result = CliRunner().invoke(app, ["predict", *args, "--ray"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.parametrize("ray", [False, True], ids=["one-machine", "ray-tasks"])
def test_predict_pairs_by_registry_name_writes_the_expected_rows(
    ray, request, sqlite_store, ppi_runs, small_ppi, tmp_path, one_thread
):
    from protpeft.batch_predict import read_prediction_inputs
    from protpeft.registry import load, register_run

    register_run(ppi_runs["lora"].run_dir, "ppi-batch", alias="champion")
    pairs = tmp_path / "pairs.tsv"  # the first pairs of the synthetic file (header included)
    pairs.write_text("".join(small_ppi["pairs"].read_text().splitlines(keepends=True)[: N_PAIRS + 1]))
    out = tmp_path / "preds.tsv"
    args = ("ppi-batch@champion", "--pairs", str(pairs), "--sequences", str(small_ppi["sequences"]), "--out", str(out))
    if ray:
        request.getfixturevalue("ray_local")
        output = predict_on_ray(*args)
        assert "chunks on Ray" in output  # the progress bar follows the chunks
    else:
        output = run_predict(*args).stdout
    ids, examples, labels = read_prediction_inputs("ppi", pairs, small_ppi["sequences"], None)
    assert len(ids) == N_PAIRS
    assert f"wrote {len(ids)} predictions" in output

    header, rows = read_tsv(out)
    assert header == ["p0", "p1", "probability", "prediction", "label"]
    assert [tuple(r[:2]) for r in rows] == ids  # every pair, in input order
    expected = load("ppi-batch@champion").predict(pairs=examples)
    probs = np.array([float(r[2]) for r in rows])
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    assert [int(r[3]) for r in rows] == [int(p >= 0.5) for p in probs]
    assert [int(r[4]) for r in rows] == [int(label) for label in labels]


def test_predict_sequences_as_ray_tasks_writes_class_columns(
    ray_local, sqlite_store, symmetry_run, small_symmetry, tmp_path, one_thread
):
    import ray

    from protpeft.data.fasta import read_fasta
    from protpeft.registry import load, register_run

    register_run(symmetry_run.run_dir, "sym-batch", alias="champion")
    fasta = tmp_path / "seqs.fasta"
    sequences = {f"s{i}": seq for i, seq in enumerate(symmetry_sequences(small_symmetry["table"]))}
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in sequences.items()))
    out = tmp_path / "preds.tsv"
    predict_on_ray("sym-batch@champion", "--input", str(fasta), "--out", str(out))
    assert ray.is_initialized()  # the session's Ray instance was used and left running

    header, rows = read_tsv(out)
    names = symmetry_run.meta["label_names"]
    assert header == ["id", *[f"p_{n}" for n in names], "labels"]
    assert [r[0] for r in rows] == list(read_fasta(fasta))
    expected = load("sym-batch@champion").predict(sequences=list(sequences.values()))
    probs = np.array([[float(x) for x in r[1:-1]] for r in rows])
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    assert [r[-1] for r in rows] == [" ".join(n for n, p in zip(names, row, strict=True) if p >= 0.5) for row in probs]


def symmetry_sequences(table: Path, n: int = 24) -> list[str]:
    """The first ``n`` sequences of a synthetic symmetry table (its last column)."""
    from protpeft.data.symmetry import read_symmetry_table

    return [record.sequence for record in read_symmetry_table(table)][:n]
