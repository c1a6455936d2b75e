"""The synthetic data sets: readable by the project's own readers, split without leaks, balanced, deterministic,
and learnable from residue composition."""

from __future__ import annotations

import numpy as np
import pytest

from protpeft.data.fasta import read_fasta
from protpeft.data.pairs import check_pairs_against_sequences, read_pairs
from protpeft.data.splits import SPLITS
from protpeft.data.symmetry import SYMMETRY_CLASSES, multi_hot, read_symmetry_table
from protpeft.data.synth import write_synthetic
from protpeft.errors import ConfigError

pytestmark = pytest.mark.unit

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def ppi(tmp_path_factory):
    paths = write_synthetic("ppi", tmp_path_factory.mktemp("ppi"))
    sequences = read_fasta(paths["sequences"])
    pairs = read_pairs(paths["pairs"])
    return paths, sequences, pairs


@pytest.fixture(scope="module")
def symmetry(tmp_path_factory):
    paths = write_synthetic("symmetry", tmp_path_factory.mktemp("symmetry"))
    return paths, read_symmetry_table(paths["table"])


def composition(seq: str) -> np.ndarray:
    counts = np.array([seq.count(c) for c in AMINO_ACIDS], dtype=float)
    return counts / len(seq)


def test_ppi_files_read_back(ppi):
    paths, sequences, pairs = ppi
    assert set(paths) == {"sequences", "pairs"}
    assert paths["pairs"].read_text().splitlines()[0] == "p0\tp1\tlabel\tsplit"
    assert len(pairs) == 1200
    check_pairs_against_sequences(pairs, sequences, paths["pairs"], paths["sequences"])
    assert all(30 <= len(s) <= 120 for s in sequences.values())
    assert not set("".join(sequences.values())) & set("XBZUO")
    assert len({frozenset((p.a, p.b)) for p in pairs}) == len(pairs)
    assert all(p.a != p.b for p in pairs)


def test_ppi_no_protein_in_two_splits(ppi):
    _, _, pairs = ppi
    split_of: dict[str, str] = {}
    for pair in pairs:
        for protein in (pair.a, pair.b):
            assert split_of.setdefault(protein, pair.split) == pair.split


def test_ppi_split_sizes_and_balance(ppi):
    _, _, pairs = ppi
    for split, expected in zip(SPLITS, (840, 180, 180), strict=True):
        labels = [p.label for p in pairs if p.split == split]
        assert len(labels) == expected
        assert sum(labels) == expected // 2
    assert abs(sum(p.label for p in pairs) / len(pairs) - 0.5) < 0.01


def test_ppi_learnable_from_composition(ppi):
    from sklearn.neural_network import MLPClassifier

    _, sequences, pairs = ppi

    def features(split):
        x, y = [], []
        for pair in pairs:
            if pair.split == split:
                a, b = composition(sequences[pair.a]), composition(sequences[pair.b])
                x.append(np.concatenate([(a + b) / 2, np.abs(a - b)]) * 10)
                y.append(pair.label)
        return np.array(x), np.array(y)

    x_train, y_train = features("train")
    x_val, y_val = features("val")
    model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=0).fit(x_train, y_train)
    assert model.score(x_val, y_val) >= 0.8


def test_symmetry_file_reads_back(symmetry):
    paths, records = symmetry
    assert set(paths) == {"table"}
    assert paths["table"].read_text().splitlines()[0] == "id\tsequence\tlabel\tsplit"
    assert len(records) == 600
    assert all(30 <= len(r.sequence) <= 120 for r in records)
    counts = {s: sum(r.split == s for r in records) for s in SPLITS}
    assert counts == {"train": 420, "val": 90, "test": 90}
    n_labels = [len(r.labels) for r in records]
    assert set(n_labels) == {1, 2}
    assert 0.1 < n_labels.count(2) / len(records) < 0.3
    used = {name for r in records for name in r.labels}
    assert {"C1", "C2", "C3", "D2", "T", "C7-C9"} <= used
    # codes like C8 are written and mapped onto their class
    raw_codes = {code for line in paths["table"].read_text().splitlines()[1:] for code in line.split("\t")[2].split()}
    assert raw_codes & {"C7", "C8", "C9"} and "C7-C9" not in raw_codes


def test_symmetry_learnable_from_composition(symmetry):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    _, records = symmetry
    x = np.array([composition(r.sequence) for r in records])
    y = np.array([multi_hot(r.labels) for r in records])
    train = np.array([r.split == "train" for r in records])
    held_out = ~train
    for j, name in enumerate(SYMMETRY_CLASSES):
        if y[:, j].sum() == 0:
            continue
        model = LogisticRegression(max_iter=1000).fit(x[train], y[train, j])
        auroc = roc_auc_score(y[held_out, j], model.predict_proba(x[held_out])[:, 1])
        assert auroc >= 0.8, f"class {name}: AUROC {auroc:.3f}"


@pytest.mark.parametrize("task", ["ppi", "symmetry"])
def test_synthetic_is_deterministic(tmp_path, task):
    first = write_synthetic(task, tmp_path / "a", n=100, seed=7)
    second = write_synthetic(task, tmp_path / "b", n=100, seed=7)
    other = write_synthetic(task, tmp_path / "c", n=100, seed=8)
    for key in first:
        assert first[key].read_bytes() == second[key].read_bytes()
    assert any(first[key].read_bytes() != other[key].read_bytes() for key in first)


def test_synthetic_small_n_still_has_every_split(tmp_path):
    pairs = read_pairs(write_synthetic("ppi", tmp_path / "ppi", n=20)["pairs"])
    assert {p.split for p in pairs} == set(SPLITS)
    records = read_symmetry_table(write_synthetic("symmetry", tmp_path / "sym", n=20)["table"])
    assert {r.split for r in records} == set(SPLITS)


def test_synthetic_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="n must be at least 20"):
        write_synthetic("ppi", tmp_path, n=5)
    with pytest.raises(ConfigError, match="unknown task 'docking'"):
        write_synthetic("docking", tmp_path)  # type: ignore[arg-type]
