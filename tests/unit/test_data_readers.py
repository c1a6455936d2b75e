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


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises((InputError, InputErrors)) as info:
        call(*args, **kwargs)
    return str(info.value)


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


# ---------------------------------------------------------------------------------------------------- FASTA


def test_fasta_reads_multiline_and_accepts_special_letters(tmp_path):
    path = write(
        tmp_path,
        "seqs.fasta",
        ">P1 some description\nMKV\nlaXB\n\n>P2\nzuoM*\n>P1 again, same sequence\nMKVLAXB\n",
    )
    assert read_fasta(path) == {"P1": "MKVLAXB", "P2": "ZUOM"}


def test_fasta_crlf_and_bom(tmp_path):
    path = tmp_path / "seqs.fasta"
    path.write_bytes(b"\xef\xbb\xbf>A1\r\nMKV\r\nLA\r\n")
    assert read_fasta(path) == {"A1": "MKVLA"}


def test_fasta_empty_sequence(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">A0\nMKV\n>A1\n\n>A2\nMKV\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:3:" in msg and "sequence 'A1' is empty" in msg


def test_fasta_empty_last_sequence(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">A0\nMKV\n>A1\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:3:" in msg and "'A1' is empty" in msg


def test_fasta_bad_letter_reports_line_and_position(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">Q8\nMKV\n>Q9\nMKVLAGVSER\nTJ\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:5:" in msg
    assert "sequence 'Q9' contains 'J' at position 12, which is not an amino-acid letter" in msg


def test_fasta_inner_stop_codon_is_bad(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">Q9\nMK*V\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:2:" in msg and "'*' at position 3" in msg


def test_fasta_duplicate_id_with_different_sequence(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">P1\nMKV\n>P2\nMKV\n>P1\nMKA\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:5:" in msg and "id 'P1' appears again (line 1) with a different sequence" in msg


def test_fasta_text_before_first_header(tmp_path):
    path = write(tmp_path, "seqs.fasta", "\nhello\n>P1\nMKV\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:2:" in msg and "before the first '>' header" in msg


def test_fasta_header_without_id(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">P1\nMKV\n>\nMKV\n")
    msg = error_of(read_fasta, path)
    assert "seqs.fasta:3:" in msg and "no id" in msg


def test_fasta_collects_all_problems(tmp_path):
    path = write(tmp_path, "seqs.fasta", ">A1\n>A2\nMK1\n>A3\nMKV\n>A3\nMKA\n")
    with pytest.raises(InputErrors) as info:
        read_fasta(path)
    lines = [e.line for e in info.value.errors]
    assert lines == [1, 3, 6]


def test_fasta_empty_and_missing_file(tmp_path):
    path = write(tmp_path, "seqs.fasta", "\n  \n")
    with pytest.raises(InputError) as info:
        read_fasta(path)
    assert info.value.line is None and "seqs.fasta: file is empty" in str(info.value)
    with pytest.raises(InputError) as info:
        read_fasta(tmp_path / "nope.fasta")
    assert info.value.line is None and "nope.fasta: file not found" in str(info.value)


# ---------------------------------------------------------------------------------------------------- pairs


def test_pairs_dscript_layout(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A\tB\t1.0\n\nB C 0.0\nC\tA\t1\n")
    pairs = read_pairs(path)
    assert pairs == [
        PairRecord("A", "B", 1, None, 1),
        PairRecord("B", "C", 0, None, 3),
        PairRecord("C", "A", 1, None, 4),
    ]
    assert read_pairs(path, layout="dscript") == pairs


def test_pairs_gold_layout_tab_with_column_order_from_header(tmp_path):
    path = write(tmp_path, "pairs.tsv", "label\tsplit\tp1\tp0\n1\ttraining\tB\tA\n0\tdev\tC\tA\n0\tTest\tC\tB\n")
    pairs = read_pairs(path)
    assert pairs == [
        PairRecord("A", "B", 1, "train", 2),
        PairRecord("A", "C", 0, "val", 3),
        PairRecord("B", "C", 0, "test", 4),
    ]


def test_pairs_gold_layout_csv_and_whitespace_without_split(tmp_path):
    csv_path = write(tmp_path, "pairs.csv", 'p0,p1,label\nA,B,1\n"C",D,0.0\n')
    assert read_pairs(csv_path) == [PairRecord("A", "B", 1, None, 2), PairRecord("C", "D", 0, None, 3)]
    ws_path = write(tmp_path, "pairs.txt", "p0 p1 label split\nA  B 1 validation\n")
    assert read_pairs(ws_path, layout="gold") == [PairRecord("A", "B", 1, "val", 2)]


def test_pairs_auto_detection_does_not_mistake_ids(tmp_path):
    path = write(tmp_path, "pairs.tsv", "p0x\tp1\t1\n")
    assert read_pairs(path) == [PairRecord("p0x", "p1", 1, None, 1)]


def test_pairs_bad_label(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A\tB\t1\nA\tC\t0\n" + "A\tB\t0\n" * 6 + "A\tB\t2\n")
    msg = error_of(read_pairs, path)
    assert "pairs.tsv:9:" in msg and "label '2' must be 0 or 1" in msg


def test_pairs_bad_label_text_gold(tmp_path):
    path = write(tmp_path, "pairs.tsv", "p0\tp1\tlabel\nA\tB\tyes\n")
    msg = error_of(read_pairs, path)
    assert "pairs.tsv:2:" in msg and "label 'yes' must be 0 or 1" in msg


def test_pairs_wrong_field_count(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A\tB\t1\nA\tB\n")
    msg = error_of(read_pairs, path)
    assert "pairs.tsv:2:" in msg and "expected 3 fields" in msg and "found 2" in msg


def test_pairs_wrong_field_count_gold(tmp_path):
    path = write(tmp_path, "pairs.tsv", "p0\tp1\tlabel\tsplit\nA\tB\t1\ttrain\textra\n")
    msg = error_of(read_pairs, path)
    assert "pairs.tsv:2:" in msg and "expected 4 fields" in msg and "found 5" in msg


def test_pairs_empty_id(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A\tB\t1\n\tB\t1\n")
    msg = error_of(read_pairs, path)
    assert "pairs.tsv:2:" in msg and "id is empty" in msg


def test_pairs_bad_split(tmp_path):
    path = write(tmp_path, "pairs.tsv", "p0\tp1\tlabel\tsplit\nA\tB\t1\ttrain\nA\tC\t0\tholdout\n")
    msg = error_of(read_pairs, path)
    assert "pairs.tsv:3:" in msg and "split 'holdout' is not a split name" in msg


def test_pairs_gold_missing_column(tmp_path):
    path = write(tmp_path, "pairs.tsv", "p0\tp1\tsplit\nA\tB\ttrain\n")
    msg = error_of(read_pairs, path, layout="gold")
    assert "pairs.tsv:1:" in msg and "'label'" in msg


def test_pairs_collects_all_problems(tmp_path):
    path = write(tmp_path, "pairs.tsv", "A\tB\t3\nA\tB\t1\nA\n")
    with pytest.raises(InputErrors) as info:
        read_pairs(path)
    assert [e.line for e in info.value.errors] == [1, 3]


def test_pairs_empty_file_and_header_only(tmp_path):
    msg = error_of(read_pairs, write(tmp_path, "pairs.tsv", "\n"))
    assert msg == f"{tmp_path / 'pairs.tsv'}: file is empty"
    msg = error_of(read_pairs, write(tmp_path, "gold.tsv", "p0\tp1\tlabel\n"))
    assert "gold.tsv:" in msg and "no pairs" in msg


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


def test_symmetry_tsv(tmp_path):
    path = write(
        tmp_path,
        "table.tsv",
        "id\tsequence\tlabel\tsplit\nA1\tmkvla*\tC8 C2 C9\ttraining\nA2\tMKV\tD9;H\tdev\n\t MK V \tother\ttest\n",
    )
    records = read_symmetry_table(path)
    assert [(r.id, r.sequence, r.labels, r.split, r.line) for r in records] == [
        ("A1", "MKVLA", ("C2", "C7-C9"), "train", 2),
        ("A2", "MKV", ("D6-D12", "H"), "val", 3),
        ("seq4", "MKV", ("other",), "test", 4),
    ]


def test_symmetry_csv_with_quotes(tmp_path):
    path = write(tmp_path, "table.csv", 'sequence,label\n"MKV","C2, D2"\nMKA,"C20"\n')
    records = read_symmetry_table(path)
    assert [(r.id, r.sequence, r.labels, r.split) for r in records] == [
        ("seq2", "MKV", ("C2", "D2"), None),
        ("seq3", "MKA", ("other",), None),
    ]


def test_symmetry_bad_code(tmp_path):
    path = write(tmp_path, "table.tsv", "sequence\tlabel\nMKV\tC2\nMKV\tC1\nMKV\tC3\nMKV\tC2 Q7\n")
    msg = error_of(read_symmetry_table, path)
    assert "table.tsv:5:" in msg
    assert "label 'Q7' is not a symmetry code (expected C<n>, D<n>, H, O, T, I or other)" in msg


def test_symmetry_d1_is_invalid(tmp_path):
    path = write(tmp_path, "table.tsv", "sequence\tlabel\nMKV\tD1\n")
    msg = error_of(read_symmetry_table, path)
    assert "table.tsv:2:" in msg and "label 'D1' is not a symmetry code" in msg


def test_symmetry_missing_column(tmp_path):
    path = write(tmp_path, "table.tsv", "sequence\tlabels\nMKV\tC2\n")
    msg = error_of(read_symmetry_table, path)
    assert "table.tsv:1:" in msg and "no 'label' column" in msg


def test_symmetry_empty_label(tmp_path):
    path = write(tmp_path, "table.tsv", "sequence\tlabel\nMKV\tC2\nMKV\t \n")
    msg = error_of(read_symmetry_table, path)
    assert "table.tsv:3:" in msg and "label of sequence 'seq3' is empty" in msg


def test_symmetry_empty_sequence_and_bad_letter(tmp_path):
    path = write(tmp_path, "table.tsv", "id\tsequence\tlabel\nA1\t\tC2\nA2\tMKJ\tC2\n")
    with pytest.raises(InputErrors) as info:
        read_symmetry_table(path)
    msg = str(info.value)
    assert "table.tsv:2: sequence 'A1' is empty" in msg
    assert "table.tsv:3: sequence 'A2' contains 'J' at position 3" in msg


def test_symmetry_bad_split_and_duplicate_id(tmp_path):
    path = write(
        tmp_path,
        "table.tsv",
        "id\tsequence\tlabel\tsplit\nP1\tMKV\tC2\ttrain\nP1\tMKV\tC3\ttrain\nP1\tMKA\tC2\ttest\nP2\tMKV\tC2\tfoo\n",
    )
    with pytest.raises(InputErrors) as info:
        read_symmetry_table(path)
    msg = str(info.value)
    assert "table.tsv:4: id 'P1' appears again (line 2) with a different sequence" in msg
    assert "table.tsv:5: split 'foo' is not a split name" in msg
    assert len(info.value.errors) == 2


def test_symmetry_wrong_field_count_and_empty_file(tmp_path):
    msg = error_of(read_symmetry_table, write(tmp_path, "table.tsv", "sequence\tlabel\nMKV\n"))
    assert "table.tsv:2:" in msg and "expected 2 fields" in msg
    msg = error_of(read_symmetry_table, write(tmp_path, "empty.tsv", ""))
    assert "empty.tsv: file is empty" in msg


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
