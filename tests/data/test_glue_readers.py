"""GLUE TSV readers on fixture files in every task's layout, generic CSV/JSONL, errors, `data check glue`."""

from __future__ import annotations

import json

import pytest

from fewlabels.data.base import DataError
from fewlabels.data.common import CheckReport
from fewlabels.data.glue import TextExample, glue_task, read_glue, read_hf_disk, read_text_file
from fewlabels.data.registry import get_dataset

T = "\t"


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(T.join(r) + "\n" for r in rows), encoding="utf-8")


def make_glue(root):
    """Two-row train/dev files in the original glue_data layout of all nine tasks."""
    cola = [["gj04", "1", "", "Our friends won't buy this."], ["gj04", "0", "*", 'They "drank the pub.']]
    write(root / "CoLA" / "train.tsv", cola)
    write(root / "CoLA" / "dev.tsv", cola[::-1])
    sst = [["sentence", "label"], ["hide new secretions ", "0"], ["a charming film", "1"]]
    write(root / "SST-2" / "train.tsv", sst)
    write(root / "SST-2" / "dev.tsv", sst)
    mrpc = [
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        ["1", "702876", "702977", "He said so.", "So he said."],
        ["0", "2108705", "2108831", "Yucaipa owned it.", "It was sold."],
    ]
    write(root / "MRPC" / "train.tsv", mrpc)
    write(root / "MRPC" / "dev.tsv", mrpc)
    head = [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    ]
    stsb = [
        head,
        ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane.", "A jet.", "5.000"],
    ]
    stsb.append(["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man.", "A cat.", "0.5"])
    write(root / "STS-B" / "train.tsv", stsb)
    write(root / "STS-B" / "dev.tsv", stsb)
    qqp = [
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["133273", "213221", "213222", "How is the life?", "How is life?", "1"],
        ["402555", "536040", "536041", "Why?", "How?", "0"],
    ]
    write(root / "QQP" / "train.tsv", qqp)
    write(root / "QQP" / "dev.tsv", qqp)
    parses = ["( ( A ) )", "( B )", "(ROOT (S A))", "(ROOT (S B))"]
    mnli_train = [
        ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse"]
        + ["sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
        [
            "0",
            "31193",
            "31193n",
            "government",
            *parses,
            "Cream skimming.",
            "Product and geography.",
            "neutral",
            "neutral",
        ],
        ["1", "101457", "101457e", "telephone", *parses, "you know", "You lose.", "entailment", "entailment"],
    ]
    write(root / "MNLI" / "train.tsv", mnli_train)
    dev_head = mnli_train[0][:10] + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
    labels5 = ["contradiction"] * 5
    write(
        root / "MNLI" / "dev_matched.tsv",
        [
            dev_head,
            [
                "9",
                "63735",
                "63735n",
                "slate",
                *parses,
                "The new rights.",
                "Everyone.",
                *labels5,
                "contradiction",
            ],
        ],
    )
    write(
        root / "MNLI" / "dev_mismatched.tsv",
        [
            dev_head,
            [
                "0",
                "75290",
                "75290c",
                "letters",
                *parses,
                "Your gift.",
                "Hi.",
                *labels5[:4],
                "neutral",
                "neutral",
            ],
        ],
    )
    qnli = [["index", "question", "sentence", "label"], ["0", "When?", "In 1970.", "entailment"]]
    qnli.append(["1", "Who?", "Nobody knows.", "not_entailment"])
    write(root / "QNLI" / "train.tsv", qnli)
    write(root / "QNLI" / "dev.tsv", qnli)
    rte = [
        ["index", "sentence1", "sentence2", "label"],
        ["0", "No weapons.", "Weapons found.", "not_entailment"],
    ]
    write(root / "RTE" / "train.tsv", rte)
    write(root / "RTE" / "dev.tsv", rte)
    wnli = [["index", "sentence1", "sentence2", "label"], ["0", "I stuck a pin.", "The pin had a hole.", "1"]]
    write(root / "WNLI" / "train.tsv", wnli)
    write(root / "WNLI" / "dev.tsv", wnli)


@pytest.fixture()
def glue_root(tmp_path):
    make_glue(tmp_path / "glue_data")
    return tmp_path / "glue_data"


def test_every_glue_task_reads_its_own_layout(glue_root):
    assert read_glue(glue_root, "cola") == [
        TextExample("Our friends won't buy this.", None, 1),
        TextExample('They "drank the pub.', None, 0),  # unbalanced quote kept verbatim (QUOTE_NONE)
    ]
    assert read_glue(glue_root, "SST-2", "dev")[1] == TextExample("a charming film", None, 1)
    assert read_glue(glue_root, "mrpc")[0] == TextExample("He said so.", "So he said.", 1)
    assert [e.label for e in read_glue(glue_root, "sts-b")] == [5.0, 0.5]
    assert read_glue(glue_root, "stsb")[0].text_pair == "A jet."
    assert read_glue(glue_root, "qqp")[1] == TextExample("Why?", "How?", 0)
    train = read_glue(glue_root, "mnli")
    assert [(e.text, e.label) for e in train] == [("Cream skimming.", 1), ("you know", 0)]
    assert read_glue(glue_root, "mnli", "dev") == [TextExample("The new rights.", "Everyone.", 2)]
    assert read_glue(glue_root, "mnli-mm", "dev") == [TextExample("Your gift.", "Hi.", 1)]  # gold_label, last column
    assert [e.label for e in read_glue(glue_root, "qnli")] == [0, 1]
    assert read_glue(glue_root, "rte", "dev") == [TextExample("No weapons.", "Weapons found.", 1)]
    assert read_glue(glue_root, "wnli")[0].label == 1
    assert glue_task("stsb").num_labels == 1 and glue_task("mnli").num_labels == 3


def test_task_folder_itself_can_be_the_root(glue_root):
    assert len(read_glue(glue_root / "RTE", "rte", "dev")) == 1


def test_unknown_label_names_the_file_and_line(glue_root):
    path = glue_root / "RTE" / "train.tsv"
    path.write_text(path.read_text() + "1\tA.\tB.\tmaybe\n")
    with pytest.raises(DataError, match=r"RTE/train.tsv, line 3: unknown label 'maybe'"):
        read_glue(glue_root, "rte")


def test_missing_column_names_the_file_and_line(glue_root):
    path = glue_root / "QQP" / "dev.tsv"
    path.write_text(path.read_text() + "7\t8\t9\tonly one question\n")
    with pytest.raises(DataError, match=r"QQP/dev.tsv, line 4: expected at least 6 tab-separated columns, found 4"):
        read_glue(glue_root, "qqp", "dev")
    (glue_root / "SST-2" / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"line 1: header lacks the column\(s\) \['sentence'\]"):
        read_glue(glue_root, "sst2")


def test_missing_task_folder_and_unknown_task_are_explained(tmp_path):
    with pytest.raises(DataError, match="(?s)GLUE cola files not found.*Expected layout"):
        read_glue(tmp_path, "cola")
    with pytest.raises(DataError, match="unknown GLUE task 'sst3'; valid tasks: cola, sst2"):
        read_glue(tmp_path, "sst3")


def test_csv_and_jsonl_files_with_pairs_names_and_regression(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('text,text_pair,label\n"Good, really",yes,pos\nbad,no,neg\n')
    rows = read_text_file(csv_path, pair_column="text_pair", labels=["neg", "pos"])
    assert rows == [TextExample("Good, really", "yes", 1), TextExample("bad", "no", 0)]
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text(json.dumps({"text": "a", "label": 2.5}) + "\n\n" + json.dumps({"text": "b", "label": "1"}) + "\n")
    assert [e.label for e in read_text_file(jsonl, regression=True)] == [2.5, 1.0]
    jsonl.write_text(json.dumps({"text": "a", "label": 1}) + "\n" + json.dumps({"sentence": "b", "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"dev.jsonl, line 2: missing column\(s\) \['text'\]"):
        read_text_file(jsonl)
    with pytest.raises(DataError, match=r"train.csv, line 3: unknown label 'neg'; expected one of pos"):
        read_text_file(csv_path, pair_column="text_pair", labels=["pos"])


def test_hf_disk_without_the_datasets_package_is_a_clear_error(tmp_path):
    pytest.importorskip("sys")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs the `datasets` package"):
            read_hf_disk(tmp_path, "train")
    else:
        pytest.skip("datasets is installed: the missing-package message cannot be observed")


def test_data_check_glue_counts_every_task(glue_root):
    report = CheckReport("glue", str(glue_root))
    get_dataset("glue").check(glue_root, report)
    assert report.ok, report.problems
    assert report.counts["cola train"] == 2 and report.counts["mnli dev"] == 1 and report.counts["mnli-mm dev"] == 1
    assert "mnli-mm train" not in report.counts and len(report.counts) == 19
    broken = CheckReport("glue", str(glue_root))
    (glue_root / "WNLI" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\t7\n")
    get_dataset("glue").check(glue_root, broken)
    assert not broken.ok and "WNLI/dev.tsv, line 2: unknown label '7'" in broken.problems[0]


def test_the_reader_and_data_check_read_text_files_alike(tmp_path):
    """One reading of CSV/TSV (header names, a byte-order mark dropped) and of JSONL (the first bad line named) serves
    training and `data check`."""
    tsv = tmp_path / "train.tsv"
    tsv.write_text("\ufefftext\tlabel\na, b\t1\nc\t0\n", encoding="utf-8")
    assert read_text_file(tsv) == [TextExample("a, b", None, 1), TextExample("c", None, 0)]
    report = CheckReport("csv", str(tsv))
    get_dataset("csv").check(tsv, report)
    assert report.ok and report.counts == {"train.tsv rows (text, label)": 2}
    jsonl = tmp_path / "dev.jsonl"
    for second, problem in (("{not json", "invalid JSON"), ("[1, 2]", "expected a JSON object per line")):
        jsonl.write_text(json.dumps({"text": "a", "label": 1}) + "\n\n" + second + "\n" + json.dumps({"text": "b"}))
        with pytest.raises(DataError) as raised:
            read_text_file(jsonl)
        assert str(raised.value).startswith(f"{jsonl}, line 3: {problem}")
        report = CheckReport("jsonl", str(jsonl))
        get_dataset("jsonl").check(jsonl, report)
        assert report.problems == [str(raised.value)] and report.counts == {"dev.jsonl rows": 1}
