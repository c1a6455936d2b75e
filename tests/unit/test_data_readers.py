"""Readers of FASTA, PPI pairs and symmetry tables, and the split functions: good input parses, every bad input
is reported with file, line and problem."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from protpeft.data.alphabet import ESM_LETTERS, first_bad_letter, normalize_sequence
from protpeft.data.fasta import read_fasta
from protpeft.data.pairs import PairRecord, check_pairs_against_sequences, read_pairs
from protpeft.data.splits import (
    SPLITS,
    check_no_empty_splits,
    normalize_split_name,
    random_split,
    split_pairs_by_protein,
)
from protpeft.data.symmetry import SYMMETRY_CLASSES, multi_hot, read_symmetry_table, symmetry_class
from protpeft.errors import InputError, InputErrors

pytestmark = pytest.mark.unit

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ppi-dscript"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# ---------------------------------------------------------------------------------------------------- alphabet


def test_alphabet_has_esm_letters():
    assert len(ESM_LETTERS) == 25 and len(set(ESM_LETTERS)) == 25
    assert set("XBZUO") <= set(ESM_LETTERS)


def test_normalize_sequence_strips_uppercases_and_drops_one_stop():
    assert normalize_sequence("  mkv\tla*\n") == "MKVLA"
    assert normalize_sequence("MK**") == "MK*"
    assert normalize_sequence("M K\nV") == "MKV"


def test_first_bad_letter():
    assert first_bad_letter("MKVLA") is None
    assert first_bad_letter("MKJLJ") == (3, "J")
    assert first_bad_letter("MK1") == (3, "1")


# ---------------------------------------------------------------------------------------------------- good input

TSV_TABLE = "id\tsequence\tlabel\tsplit\nA1\tmkvla*\tC8 C2 C9\ttraining\nA2\tMKV\tD9;H\tdev\n\t MK V \tother\ttest\n"


def _rows(records) -> list[tuple]:
    return [(r.id, r.sequence, r.labels, r.split, r.line) for r in records]


GOOD_INPUT = [
    # (reader, file name, content, keyword arguments, records as the reader returns them, or made comparable)
    (read_fasta, "seqs.fasta", ">P1 some description\nMKV\nlaXB\n\n>P2\nzuoM*\n>P1 again, same sequence\nMKVLAXB\n",
     {}, {"P1": "MKVLAXB", "P2": "ZUOM"}),
    (read_fasta, "seqs.fasta", b"\xef\xbb\xbf>A1\r\nMKV\r\nLA\r\n", {}, {"A1": "MKVLA"}),
    (read_pairs, "pairs.tsv", "A\tB\t1.0\n\nB C 0.0\nC\tA\t1\n", {},
     [PairRecord("A", "B", 1, None, 1), PairRecord("B", "C", 0, None, 3), PairRecord("C", "A", 1, None, 4)]),
    (read_pairs, "pairs.tsv", "A\tB\t1.0\n\nB C 0.0\nC\tA\t1\n", {"layout": "dscript"},
     [PairRecord("A", "B", 1, None, 1), PairRecord("B", "C", 0, None, 3), PairRecord("C", "A", 1, None, 4)]),
    (read_pairs, "pairs.tsv", "label\tsplit\tp1\tp0\n1\ttraining\tB\tA\n0\tdev\tC\tA\n0\tTest\tC\tB\n", {},
     [PairRecord("A", "B", 1, "train", 2), PairRecord("A", "C", 0, "val", 3), PairRecord("B", "C", 0, "test", 4)]),
    (read_pairs, "pairs.csv", 'p0,p1,label\nA,B,1\n"C",D,0.0\n', {},
     [PairRecord("A", "B", 1, None, 2), PairRecord("C", "D", 0, None, 3)]),
    (read_pairs, "pairs.txt", "p0 p1 label split\nA  B 1 validation\n", {"layout": "gold"},
     [PairRecord("A", "B", 1, "val", 2)]),
    (read_pairs, "pairs.tsv", "p0x\tp1\t1\n", {}, [PairRecord("p0x", "p1", 1, None, 1)]),  # ids, not a header
    (read_symmetry_table, "table.tsv", TSV_TABLE, {},
     [("A1", "MKVLA", ("C2", "C7-C9"), "train", 2), ("A2", "MKV", ("D6-D12", "H"), "val", 3),
      ("seq4", "MKV", ("other",), "test", 4)]),
    (read_symmetry_table, "table.csv", 'sequence,label\n"MKV","C2, D2"\nMKA,"C20"\n', {},
     [("seq2", "MKV", ("C2", "D2"), None, 2), ("seq3", "MKA", ("other",), None, 3)]),
]  # fmt: skip


@pytest.mark.parametrize(("reader", "name", "content", "kwargs", "expected"), GOOD_INPUT)
def test_good_input_parses(tmp_path, reader, name: str, content: str | bytes, kwargs: dict, expected) -> None:
    got = reader(write(tmp_path, name, content), **kwargs)
    assert (_rows(got) if reader is read_symmetry_table else got) == expected


# ---------------------------------------------------------------------------------------------------- bad input

BAD_INPUT = [
    # (reader, file name, content (None: no file), keyword arguments, the lines of the errors, message fragments);
    # "{path}" in a fragment stands for the file's path
    (read_fasta, "seqs.fasta", ">A0\nMKV\n>A1\n\n>A2\nMKV\n", {}, [3], ["seqs.fasta:3:", "sequence 'A1' is empty"]),
    (read_fasta, "seqs.fasta", ">A0\nMKV\n>A1\n", {}, [3], ["seqs.fasta:3:", "'A1' is empty"]),
    (read_fasta, "seqs.fasta", ">Q8\nMKV\n>Q9\nMKVLAGVSER\nTJ\n", {}, [5],
     ["seqs.fasta:5:", "sequence 'Q9' contains 'J' at position 12, which is not an amino-acid letter"]),
    (read_fasta, "seqs.fasta", ">Q9\nMK*V\n", {}, [2], ["seqs.fasta:2:", "'*' at position 3"]),  # inner stop
    (read_fasta, "seqs.fasta", ">P1\nMKV\n>P2\nMKV\n>P1\nMKA\n", {}, [5],
     ["seqs.fasta:5:", "id 'P1' appears again (line 1) with a different sequence"]),
    (read_fasta, "seqs.fasta", "\nhello\n>P1\nMKV\n", {}, [2], ["seqs.fasta:2:", "before the first '>' header"]),
    (read_fasta, "seqs.fasta", ">P1\nMKV\n>\nMKV\n", {}, [3], ["seqs.fasta:3:", "no id"]),
    (read_fasta, "seqs.fasta", ">A1\n>A2\nMK1\n>A3\nMKV\n>A3\nMKA\n", {}, [1, 3, 6], []),  # every problem at once
    (read_fasta, "seqs.fasta", "\n  \n", {}, [None], ["seqs.fasta: file is empty"]),
    (read_fasta, "nope.fasta", None, {}, [None], ["nope.fasta: file not found"]),
    (read_pairs, "pairs.tsv", "A\tB\t1\nA\tC\t0\n" + "A\tB\t0\n" * 6 + "A\tB\t2\n", {}, [9],
     ["pairs.tsv:9:", "label '2' must be 0 or 1"]),
    (read_pairs, "pairs.tsv", "p0\tp1\tlabel\nA\tB\tyes\n", {}, [2], ["pairs.tsv:2:", "label 'yes' must be 0 or 1"]),
    (read_pairs, "pairs.tsv", "A\tB\t1\nA\tB\n", {}, [2], ["pairs.tsv:2:", "expected 3 fields", "found 2"]),
    (read_pairs, "pairs.tsv", "p0\tp1\tlabel\tsplit\nA\tB\t1\ttrain\textra\n", {}, [2],
     ["pairs.tsv:2:", "expected 4 fields", "found 5"]),
    (read_pairs, "pairs.tsv", "A\tB\t1\n\tB\t1\n", {}, [2], ["pairs.tsv:2:", "id is empty"]),
    (read_pairs, "pairs.tsv", "p0\tp1\tlabel\tsplit\nA\tB\t1\ttrain\nA\tC\t0\tholdout\n", {}, [3],
     ["pairs.tsv:3:", "split 'holdout' is not a split name"]),
    (read_pairs, "pairs.tsv", "p0\tp1\tsplit\nA\tB\ttrain\n", {"layout": "gold"}, [1], ["pairs.tsv:1:", "'label'"]),
    (read_pairs, "pairs.tsv", "A\tB\t3\nA\tB\t1\nA\n", {}, [1, 3], []),  # every problem at once
    (read_pairs, "pairs.tsv", "\n", {}, [None], ["{path}: file is empty"]),
    (read_pairs, "gold.tsv", "p0\tp1\tlabel\n", {}, [None], ["gold.tsv:", "no pairs"]),
    (read_symmetry_table, "table.tsv", "sequence\tlabel\nMKV\tC2\nMKV\tC1\nMKV\tC3\nMKV\tC2 Q7\n", {}, [5],
     ["table.tsv:5:", "label 'Q7' is not a symmetry code (expected C<n>, D<n>, H, O, T, I or other)"]),
    (read_symmetry_table, "table.tsv", "sequence\tlabel\nMKV\tD1\n", {}, [2],
     ["table.tsv:2:", "label 'D1' is not a symmetry code"]),
    (read_symmetry_table, "table.tsv", "sequence\tlabels\nMKV\tC2\n", {}, [1], ["table.tsv:1:", "no 'label' column"]),
    (read_symmetry_table, "table.tsv", "sequence\tlabel\nMKV\tC2\nMKV\t \n", {}, [3],
     ["table.tsv:3:", "label of sequence 'seq3' is empty"]),
    (read_symmetry_table, "table.tsv", "id\tsequence\tlabel\nA1\t\tC2\nA2\tMKJ\tC2\n", {}, [2, 3],
     ["table.tsv:2: sequence 'A1' is empty", "table.tsv:3: sequence 'A2' contains 'J' at position 3"]),
    (read_symmetry_table, "table.tsv",
     "id\tsequence\tlabel\tsplit\nP1\tMKV\tC2\ttrain\nP1\tMKV\tC3\ttrain\nP1\tMKA\tC2\ttest\nP2\tMKV\tC2\tfoo\n", {},
     [4, 5], ["table.tsv:4: id 'P1' appears again (line 2) with a different sequence",
              "table.tsv:5: split 'foo' is not a split name"]),
    (read_symmetry_table, "table.tsv", "sequence\tlabel\nMKV\n", {}, [2], ["table.tsv:2:", "expected 2 fields"]),
    (read_symmetry_table, "empty.tsv", "", {}, [None], ["empty.tsv: file is empty"]),
]  # fmt: skip


@pytest.mark.parametrize(("reader", "name", "content", "kwargs", "lines", "fragments"), BAD_INPUT)
def test_bad_input_names_file_line_and_problem(
    tmp_path, reader, name: str, content: str | None, kwargs: dict, lines: list, fragments: list[str]
) -> None:
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises((InputError, InputErrors)) as info:
        reader(path, **kwargs)
    errors = info.value.errors if isinstance(info.value, InputErrors) else [info.value]
    assert [e.line for e in errors] == lines
    message = str(info.value)
    assert len(message.splitlines()) == len(lines)  # one line per problem
    for fragment in fragments:
        assert fragment.format(path=path) in message


def test_pairs_missing_ids_against_fasta(tmp_path):
    pairs = [
        PairRecord("A", "B", 1, None, 1),
        PairRecord("P12345", "A", 0, None, 17),
        PairRecord("Z", "Z", 0, None, 18),
    ]
    check_pairs_against_sequences(pairs[:1], {"A": "M", "B": "K"}, "pairs.tsv", "sequences.fasta")
    with pytest.raises(InputErrors) as info:
        check_pairs_against_sequences(pairs, {"A": "M", "B": "K"}, "pairs.tsv", "sequences.fasta")
    msg = str(info.value)
    assert "pairs.tsv:17: protein 'P12345' is not in sequences.fasta" in msg
    assert "pairs.tsv:18: protein 'Z' is not in sequences.fasta" in msg
    assert len(info.value.errors) == 2


@pytest.mark.skipif(not (REAL_DATA / "ecoli_test.tsv").exists(), reason="real D-SCRIPT E. coli data not present")
def test_real_dscript_ecoli_files():
    start = time.perf_counter()
    sequences = read_fasta(REAL_DATA / "ecoli.fasta")
    fasta_seconds = time.perf_counter() - start
    pairs = read_pairs(REAL_DATA / "ecoli_test.tsv")
    assert len(sequences) == 8848
    assert fasta_seconds < 3.0  # ~0.1 s on a 2-core machine; generous for a loaded one
    assert len(pairs) == 22000
    assert sum(p.label for p in pairs) == 2000
    assert all(p.split is None for p in pairs)
    check_pairs_against_sequences(pairs, sequences, REAL_DATA / "ecoli_test.tsv", REAL_DATA / "ecoli.fasta")


# ---------------------------------------------------------------------------------------------------- symmetry


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("C1", "C1"),
        ("c2", "C2"),
        ("C6", "C6"),
        ("C7", "C7-C9"),
        ("C8", "C7-C9"),
        ("C9", "C7-C9"),
        ("C10", "C10-C17"),
        ("C17", "C10-C17"),
        ("C18", "other"),
        ("C20", "other"),
        ("D2", "D2"),
        ("d5", "D5"),
        ("D6", "D6-D12"),
        ("D9", "D6-D12"),
        ("D12", "D6-D12"),
        ("D13", "other"),
        ("H", "H"),
        ("o", "O"),
        ("T", "T"),
        ("I", "I"),
        ("other", "other"),
        ("Other", "other"),
        ("C0", None),
        ("D0", None),
        ("D1", None),
        ("Q3", None),
        ("", None),
        ("C", None),
        ("C2x", None),
    ],
)
def test_symmetry_class_mapping(code, expected):
    assert symmetry_class(code) == expected


def test_symmetry_classes_and_multi_hot():
    assert len(SYMMETRY_CLASSES) == 18 and SYMMETRY_CLASSES[6] == "C7-C9" and SYMMETRY_CLASSES[-1] == "other"
    vector = multi_hot(("C1", "other"))
    assert len(vector) == 18 and vector[0] == 1.0 and vector[17] == 1.0 and sum(vector) == 2.0


# ---------------------------------------------------------------------------------------------------- splits


def test_normalize_split_name():
    assert [normalize_split_name(v) for v in ("Train", "training", "val", "VALID", "validation", "dev")] == [
        "train",
        "train",
        "val",
        "val",
        "val",
        "val",
    ]
    assert normalize_split_name(" test ") == "test" and normalize_split_name("testing") == "test"
    assert normalize_split_name("holdout") is None and normalize_split_name("") is None
    assert SPLITS == ("train", "val", "test")


def test_random_split_exact_counts_and_determinism():
    labels = random_split(101, (0.8, 0.1, 0.1), seed=3)
    assert len(labels) == 101
    assert labels.count("val") == 10 and labels.count("test") == 10 and labels.count("train") == 81
    assert labels == random_split(101, (0.8, 0.1, 0.1), seed=3)
    assert labels != random_split(101, (0.8, 0.1, 0.1), seed=4)
    assert random_split(3, (0.0, 0.5, 0.5), seed=0).count("train") >= 0
    with pytest.raises(ValueError):
        random_split(10, (0.5, 0.5, 0.5), seed=0)


def _random_graph(n_proteins: int, n_pairs: int, seed: int) -> list[PairRecord]:
    rng = random.Random(seed)
    return [
        PairRecord(f"P{rng.randrange(n_proteins)}", f"P{rng.randrange(n_proteins)}", rng.randint(0, 1), None, i + 1)
        for i in range(n_pairs)
    ]


def test_split_pairs_by_protein_no_leak_and_fractions():
    pairs = _random_graph(2000, 20000, seed=0)
    fractions = (0.7, 0.15, 0.15)
    splits, stats = split_pairs_by_protein(pairs, fractions, seed=1)
    assert len(splits) == len(pairs)
    seen: dict[str, str] = {}
    for pair, split in zip(pairs, splits, strict=True):
        if split is None:
            continue
        for protein in (pair.a, pair.b):
            assert seen.setdefault(protein, split) == split
    kept = stats["kept"]
    assert sum(kept.values()) + stats["dropped"] == len(pairs)
    assert stats["dropped"] == splits.count(None)
    total = sum(kept.values())
    for name, fraction in zip(SPLITS, fractions, strict=True):
        assert kept[name] == splits.count(name)
        assert abs(kept[name] / total - fraction) < 0.05
    assert split_pairs_by_protein(pairs, fractions, seed=1) == (splits, stats)
    assert split_pairs_by_protein(list(reversed(pairs)), fractions, seed=1)[0] == list(reversed(splits))


def test_check_no_empty_splits():
    check_no_empty_splits({"train": 5, "val": 1, "test": 1}, "pairs.tsv")
    with pytest.raises(InputError) as info:
        check_no_empty_splits({"train": 5, "val": 0, "test": 1}, "pairs.tsv")
    assert info.value.line is None and str(info.value).startswith("pairs.tsv: split 'val' has no examples")
    with pytest.raises(InputError) as info:
        check_no_empty_splits({"train": 5}, "pairs.tsv")
    assert "split 'val' has no examples" in str(info.value) and "split 'test' has no examples" in str(info.value)
