"""CounterFact / MemoTrap / Gigaword / MMLU loaders on real-schema fixtures and a monkeypatched hub."""
import json
from pathlib import Path

import pytest

import routerlens_interp as rl
from routerlens_interp.data.benchmarks import SUMMARY_QUESTION, benchmark_format
from routerlens_interp.data.loaders import HubDataUnavailable
from routerlens_interp.errors import UserError

FIX = Path(__file__).parent / "fixtures"


def _rows(name):
    p = FIX / name
    return json.loads(p.read_text()) if p.suffix == ".json" else [json.loads(l) for l in p.read_text().splitlines()]


class FakeHub:
    """Stands in for ``datasets.load_dataset``: records every call, returns the given rows."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return list(self.rows)


@pytest.fixture
def hub(monkeypatch):
    import datasets

    def install(rows):
        fake = FakeHub(rows)
        monkeypatch.setattr(datasets, "load_dataset", fake)
        return fake

    return install


def test_counterfact_file_becomes_context_faithfulness_qa():
    data = rl.load_dataset(FIX / "counterfact.json")
    assert len(data) == 3 and all(isinstance(ex, rl.QAExample) for ex in data)
    ex = data[0]
    assert ex.question == "The mother tongue of Danielle Darrieux is"
    assert ex.context == "The mother tongue of Danielle Darrieux is English."
    assert ex.answers == ["English"] and ex.memory_answer == "French" and ex.id == "0"
    assert "French" not in ex.context and ex.meta["benchmark"] == "counterfact"
    assert data[2].context == "Toko Yasuda, the piano."  # the prompt "{}, the" filled in


def test_counterfact_paraphrase_question_and_hub(hub):
    from routerlens_interp.data.benchmarks import load_benchmark

    ex = load_benchmark(FIX / "counterfact.json", question="paraphrase")[0]
    assert ex.question.endswith("Danielle Darrieux, a native") and ex.answers == ["English"]
    fake = hub(_rows("counterfact.json"))
    fake.rows = fake.rows * 10  # 30 rows: validation is the last 10 % of the hub's train
    val = rl.load_dataset("counterfact", split="validation")
    train = rl.load_dataset("counterfact", split="train")
    test = rl.load_dataset("counterfact", split="test", limit=2)
    assert [c[1]["split"] for c in fake.calls] == ["train", "train", "test"]
    assert (len(val), len(train), len(test)) == (3, 27, 2) and test[1].memory_answer == "Christianity"


def test_memotrap_csv_and_hub(hub):
    data = rl.load_dataset(FIX / "memotrap.csv")
    assert [ex.label for ex in data] == [0, 1, 0]
    assert data[0].choices == [" heavy.", " fonder."] and data[0].style == "endings"
    assert isinstance(data[0], rl.ChoiceExample)
    fake = hub(_rows("memotrap_hub.jsonl"))  # 12 rows; one published split "data"
    test = rl.load_dataset("memotrap", split="test")
    train = rl.load_dataset("memo-trap", split="train")
    every = rl.load_dataset("memotrap", split="data")
    assert fake.calls[0] == (("pminervini/inverse-scaling", "memo-trap"), {"split": "data"})
    assert (len(train), len(test), len(every)) == (10, 1, 12)  # positional 80/10/10 cut, disjoint
    assert test[0].meta["part"] == every[-1].meta["part"]


def test_gigaword_file_and_hub(hub):
    data = rl.load_dataset(FIX / "gigaword.jsonl")
    assert data[1].answers == ["sri lanka closes schools as war escalates"]
    assert data[1].question == SUMMARY_QUESTION and data[1].meta["task"] == "summarization"
    fake = hub(_rows("gigaword.jsonl"))
    rl.load_dataset("gigaword", split="test")
    assert fake.calls == [(("Harvard/gigaword",), {"split": "test", "revision": "refs/convert/parquet"})]


def test_mmlu_file_configs_and_letters(hub):
    data = rl.load_dataset(FIX / "mmlu_test.jsonl")
    assert [ex.label for ex in data] == [1, 2, 3] and data[0].style == "letters"
    assert data[0].meta["subject"] == "abstract_algebra"
    fake = hub(_rows("mmlu_dev.jsonl"))
    assert len(rl.load_dataset("mmlu", split="dev")) == 5
    rl.load_dataset("mmlu:abstract_algebra", split="test")
    assert fake.calls == [(("cais/mmlu", "all"), {"split": "dev"}), (("cais/mmlu", "abstract_algebra"), {"split": "test"})]
    letter = rl.load_dataset(FIX / "mmlu_test.jsonl", format="mmlu")  # forced format works too
    assert letter[2].label == 3
    from routerlens_interp.data.benchmarks import mmlu_example

    assert mmlu_example({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "C"}).label == 2


def test_schema_detection_leaves_qa_files_to_the_qa_loader():
    assert benchmark_format({"context": "c", "question": "q", "answer": "a"}) is None
    assert benchmark_format({"question": "q", "choices": ["a"], "answer": 0}) == "mmlu"
    qa = rl.load_dataset(FIX / "nq_swap.jsonl")
    assert qa and all(isinstance(ex, rl.QAExample) and ex.meta.get("benchmark") is None for ex in qa)


def test_bad_records_name_the_record(tmp_path):
    p = tmp_path / "cf.jsonl"
    p.write_text(json.dumps({"requested_rewrite": {"prompt": "no placeholder", "subject": "X",
                                                   "target_new": {"str": "a"}, "target_true": {"str": "b"}}}) + "\n")
    with pytest.raises(UserError, match="record 0.*no '\\{\\}'"):
        rl.load_dataset(p)
    m = tmp_path / "m.csv"
    m.write_text("prompt,classes,answer_index\nhello,not a list,0\n")
    with pytest.raises(UserError, match="MemoTrap record 0: 'classes'"):
        rl.load_dataset(m)
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    with pytest.raises(UserError, match="MMLU record 0"):
        rl.load_dataset(q)
    c = tmp_path / "other.csv"
    c.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="match no benchmark"):
        rl.load_dataset(c)


def test_offline_hub_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubDataUnavailable, match="cais/mmlu.*offline: ConnectionError.*local file"):
        rl.load_dataset("mmlu")
    with pytest.raises(UserError, match="published as one split"):
        rl.load_dataset("memotrap", split="bogus")
    with pytest.raises(UserError, match="no configs"):
        rl.load_dataset("gigaword:xyz")


def test_seed_and_limit_apply(hub):
    hub(_rows("memotrap_hub.jsonl"))
    a = rl.load_dataset("memotrap", split="all", seed=3, limit=5)
    b = rl.load_dataset("memotrap", split="all", seed=3, limit=5)
    c = rl.load_dataset("memotrap", split="all", limit=5)
    assert len(a) == 5 and [x.meta["part"] for x in a] == [x.meta["part"] for x in b]
    assert [x.id for x in c] == ["0", "1", "2", "3", "4"] and [x.id for x in a] != [x.id for x in c]
