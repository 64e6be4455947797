"""Data loaders on hand-written fixtures of every native form; hub path with a patched datasets."""
import importlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from routerlens_interp.data import detect_format, load_dataset
from routerlens_interp.data.loaders import CONFIQA_URL
from routerlens_interp.examples import QAExample

FIX = Path(__file__).parent / "fixtures"


# --- every native form on its fixture ---------------------------------------------------------
def test_canonical_jsonl():
    data = load_dataset(FIX / "canonical.jsonl")
    assert len(data) == 4 and all(isinstance(ex, QAExample) for ex in data)
    assert data[0].answers == ["Warsaw"] and data[0].id == "c1" and data[0].memory_answer is None
    assert data[0].context.startswith("Marie Curie") and data[0].question == "Where was Marie Curie born?"
    assert data[1].answers == ["the Mediterranean Sea", "Mediterranean"]
    assert data[2].memory_answer == "Canberra" and data[2].answers == ["Melbourne"]
    assert data[3].answers == ["South America"] and data[3].id == "3"
    assert data[3].meta["topic"] == "geography" and data[3].meta["source"] == "canonical.jsonl"


def test_canonical_json_with_data_key():
    data = load_dataset(str(FIX / "canonical_data.json"))
    assert [ex.id for ex in data] == ["d1", "d2", "d3"]
    assert data[0].answers == ["the Analytical Engine"]
    assert data[2].memory_answer == "100 degrees Celsius"


def test_squad_nested_v11():
    data = load_dataset(FIX / "squad_v1.1.json")
    assert len(data) == 4
    assert data[0].id == "56be4db0acb8001400a502ec"
    assert data[0].answers == ["Denver Broncos"]  # three identical gold answers folded into one
    assert data[2].answers == ["Santa Clara, California", "Levi's Stadium",
                               "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."]
    assert data[2].meta["title"] == "Super_Bowl_50" and data[2].meta["answer_start"] == [403, 355, 355]
    assert data[3].question == "On which river does Warsaw stand?" and data[3].context.startswith("Warsaw is")
    assert all(ex.memory_answer is None for ex in data)


def test_squad_flat_hf_form():
    data = load_dataset(FIX / "squad_flat.jsonl")
    assert len(data) == 3
    assert data[1].answers == ["The Observer", "Observer"]
    assert data[2].answers == ["Saint Bernadette Soubirous"]
    ctx = data[2].context
    assert ctx[data[2].meta["answer_start"][0]:].startswith("Saint Bernadette")


def test_nq_swap():
    data = load_dataset(FIX / "nq_swap.jsonl")
    assert len(data) == 4
    ex = data[0]
    assert ex.context.endswith("written by Charles Dickens . </P>")  # the substituted context
    assert ex.answers == ["Charles Dickens"] and ex.memory_answer == "Jane Austen"
    assert ex.meta["original_context"].endswith("Jane Austen . </P>")
    assert data[2].memory_answer == "Leonardo da Vinci"
    assert data[2].meta["memory_answers"] == ["Leonardo da Vinci", "da Vinci"]
    assert data[3].answers == ["14 March 1975"] and data[3].memory_answer == "9 November 1989"  # str fields


def test_confiqa():
    data = load_dataset(FIX / "confiqa.json")
    assert len(data) == 3
    assert data[0].context.startswith("Lyon is the capital")
    assert data[0].answers == ["Lyon", "Lyons"]
    assert data[0].memory_answer == "Paris" and data[0].meta["memory_answers"] == ["Paris", "City of Light"]
    assert data[1].answers == ["Akihito"] and data[1].memory_answer == "Naruhito"
    assert data[2].answers == ["Bulgaria", "Republic of Bulgaria"]


def test_confiqa_variants():
    recs = [{"question": "Q?", "counterfactual_context": "C.", "counterfactual_answer": "X",
             "cf_answer_alias": ["X1", "X"], "original_answer": "Y"}]
    from routerlens_interp.data import records_to_examples
    (ex,) = records_to_examples(recs)
    assert ex.context == "C." and ex.answers == ["X", "X1"] and ex.memory_answer == "Y"


def test_mrqa_original_nested_jsonl():
    data = load_dataset(FIX / "mrqa_nq.jsonl")
    assert [ex.id for ex in data] == ["nq-1", "nq-2", "nq-3"]
    assert data[0].answers == ["1889"]
    assert data[1].answers == ["the Champ de Mars in Paris , France", "Paris"]
    assert data[0].context == data[1].context
    assert all(ex.meta["subset"] == "NaturalQuestionsShort" for ex in data)


def test_mrqa_flat_with_detected_answers_fallback():
    data = load_dataset(FIX / "mrqa_hotpotqa.jsonl")
    assert len(data) == 3
    assert data[0].answers == ["yes"] and data[0].id == "5a8b57f25542995d1e6f1371"
    assert data[1].answers == ["Chief of Protocol"]
    assert data[2].answers == ["Michael Grant"]  # empty answers -> detected answer
    assert data[2].meta["subset"] == "HotpotQA"


# --- format detection and override ------------------------------------------------------------
def test_detect_format():
    assert detect_format({"context": "c", "question": "q", "answer": "a"}) == "canonical"
    assert detect_format({"context": "c", "question": "q", "answers": ["a"]}) == "canonical"
    assert detect_format({"context": "c", "question": "q", "answers": {"text": ["a"], "answer_start": [0]}}) == "squad"
    assert detect_format({"question": "q", "org_context": "o", "org_answer": ["a"], "sub_context": "s",
                          "sub_answer": ["b"]}) == "nq-swap"
    assert detect_format({"question": "q", "cf_context": "c", "cf_answer": "a", "orig_answer": "b"}) == "confiqa"
    assert detect_format({"context": "c", "question": "q", "answers": ["a"], "detected_answers": []}) == "mrqa"
    assert detect_format({"prompt": "p", "completion": "c"}) is None
    assert detect_format(["not", "a", "record"]) is None


def test_format_override(tmp_path):
    # a record carrying both NQ-Swap fields and canonical fields: detection picks NQ-Swap ...
    rec = {"question": "who?", "context": "plain context", "answer": "A", "org_context": "o",
           "org_answer": ["M"], "sub_context": "swapped context", "sub_answer": ["S"]}
    p = tmp_path / "both.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    (ex,) = load_dataset(p)
    assert ex.context == "swapped context" and ex.answers == ["S"] and ex.memory_answer == "M"
    # ... and format= overrides it
    (ex,) = load_dataset(p, format="canonical")
    assert ex.context == "plain context" and ex.answers == ["A"] and ex.memory_answer is None
    (ex,) = load_dataset(p, format="nq_swap")  # spelling variants accepted
    assert ex.answers == ["S"]
    # a forced format whose fields are missing -> error naming the fields
    with pytest.raises(ValueError, match="sub_context"):
        load_dataset(FIX / "canonical.jsonl", format="nq-swap")
    with pytest.raises(ValueError, match="accepted formats"):
        load_dataset(p, format="tsv")


def test_unanswerable_records_skipped(tmp_path):
    p = tmp_path / "v2.jsonl"
    rows = [{"id": "a", "context": "c", "question": "q", "answers": {"text": ["x"], "answer_start": [0]}},
            {"id": "b", "context": "c", "question": "q2", "answers": {"text": [], "answer_start": []}}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        data = load_dataset(p)
    assert [ex.id for ex in data] == ["a"]


def test_json_file_holding_jsonl(tmp_path):
    p = tmp_path / "lines.json"
    p.write_text((FIX / "nq_swap.jsonl").read_text())
    assert len(load_dataset(p)) == 4


# --- errors -----------------------------------------------------------------------------------
def test_unknown_name_lists_accepted():
    with pytest.raises(ValueError) as err:
        load_dataset("triviaqa")
    msg = str(err.value)
    for word in ("squad", "nq-swap", "confiqa", "hotpotqa", "toy-conflict", ".jsonl", "sub_context", "cf_context"):
        assert word in msg


def test_missing_file():
    with pytest.raises(ValueError, match="no such data file") as err:
        load_dataset(FIX / "does_not_exist.jsonl")
    assert "nq-swap" in str(err.value)
    with pytest.raises(ValueError, match="not a data file"):
        load_dataset(FIX)


def test_bad_fields_lists_field_sets():
    with pytest.raises(ValueError) as err:
        load_dataset(FIX / "bad_fields.jsonl")
    msg = str(err.value)
    assert "prompt" in msg  # names what it found
    for word in ("canonical", "squad", "nq-swap", "confiqa", "mrqa", "org_context", "answer_start"):
        assert word in msg


# --- limit, max_tokens ------------------------------------------------------------------------
class FakeLM:
    """Tokens = white-space words of context + question (+ answer)."""

    def encode(self, ex, with_answer=True):
        n = len(ex.context.split()) + len(ex.question.split()) + (len(ex.answer.split()) if with_answer else 0)
        return SimpleNamespace(input_ids=torch.arange(n))


def test_limit():
    data = load_dataset(FIX / "nq_swap.jsonl", limit=2)
    assert [ex.answers[0] for ex in data] == ["Charles Dickens", "Neptune"]
    assert load_dataset(FIX / "nq_swap.jsonl", limit=0) == []
    assert len(load_dataset(FIX / "nq_swap.jsonl", limit=100)) == 4


def test_seed_shuffles_deterministically():
    plain = [ex.id for ex in load_dataset(FIX / "squad_v1.1.json")]
    a = [ex.id for ex in load_dataset(FIX / "squad_v1.1.json", seed=1)]
    assert a == [ex.id for ex in load_dataset(FIX / "squad_v1.1.json", seed=1)]
    assert sorted(a) == sorted(plain)
    orders = {tuple(ex.id for ex in load_dataset(FIX / "squad_v1.1.json", seed=s)) for s in range(8)}
    assert len(orders) > 1
    assert [ex.id for ex in load_dataset(FIX / "squad_v1.1.json", seed=1, limit=2)] == a[:2]


def test_max_tokens_drops_and_reports():
    # word counts (context + question + answer): 17+7+2=26, 18+9+1=28, 17+5+1=23, 11+6+3=20
    lm = FakeLM()
    assert [len(lm.encode(ex).input_ids) for ex in load_dataset(FIX / "nq_swap.jsonl")] == [26, 28, 23, 20]
    with pytest.warns(UserWarning, match="dropped 2 of 4 examples longer than 25 tokens"):
        data = load_dataset(FIX / "nq_swap.jsonl", max_tokens=25, lm=lm)
    assert [ex.answers[0] for ex in data] == ["Raphael", "14 March 1975"]
    with pytest.warns(UserWarning, match="dropped 1 of 4"):
        assert len(load_dataset(FIX / "nq_swap.jsonl", max_tokens=26, lm=lm)) == 3
    # limit counts kept examples: stops after the first one that fits
    with pytest.warns(UserWarning, match="dropped 2 of 3"):
        data = load_dataset(FIX / "nq_swap.jsonl", max_tokens=25, lm=lm, limit=1)
    assert [ex.answers[0] for ex in data] == ["Raphael"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(FIX / "nq_swap.jsonl", max_tokens=300, lm=lm)) == 4
    with pytest.raises(ValueError, match="lm"):
        load_dataset(FIX / "nq_swap.jsonl", max_tokens=25)


# --- hub names, with datasets.load_dataset patched --------------------------------------------
class FakeHub:
    def __init__(self, rows, exc=None):
        self.rows, self.exc, self.calls = rows, exc, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.exc is not None:
            raise self.exc
        return datasets.Dataset.from_list(self.rows)


def test_hub_squad(monkeypatch):
    rows = [json.loads(line) for line in (FIX / "squad_flat.jsonl").read_text().splitlines()]
    fake = FakeHub(rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_dataset("squad", split="test", limit=2)
    assert fake.calls == [(("rajpurkar/squad",), {"split": "validation"})]
    assert [ex.answers for ex in data] == [["a golden statue of the Virgin Mary"], ["The Observer", "Observer"]]
    load_dataset("squad", split="train")
    assert fake.calls[-1][1]["split"] == "train"


def test_hub_nq_swap_single_split(monkeypatch):
    rows = [{"question": f"q{i}", "org_context": f"o{i}", "org_answer": [f"m{i}"], "sub_context": f"s{i}",
             "sub_answer": [f"a{i}"]} for i in range(10)]
    fake = FakeHub(rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    test = load_dataset("nq-swap", split="test")
    assert fake.calls[0] == (("pminervini/NQ-Swap",), {"split": "dev"})
    train = load_dataset("nq-swap", split="train")
    dev = load_dataset("nq-swap", split="dev")  # our dev part, never the hub's whole "dev" split
    assert (len(train), len(dev), len(test)) == (8, 1, 1)
    assert sorted(ex.question for ex in train + dev + test) == sorted(f"q{i}" for i in range(10))
    assert [ex.question for ex in load_dataset("nq-swap", split="validation")] == [ex.question for ex in dev]
    everything = load_dataset("nq-swap", split="all")
    assert len(everything) == 10 and everything[3].memory_answer == "m3" and everything[3].context == "s3"
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        load_dataset("nq-swap", split="holdout")


def test_hub_confiqa(monkeypatch):
    rows = json.loads((FIX / "confiqa.json").read_text())
    fake = FakeHub(rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_dataset("confiqa-mr", split="all")
    args, kwargs = fake.calls[0]
    assert args == ("json",) and kwargs["data_files"] == CONFIQA_URL.format(subset="MR")
    assert [ex.memory_answer for ex in data] == ["Paris", "Naruhito", "Romania"]


def test_hub_mrqa_subset_filter(monkeypatch):
    def row(subset, i):
        return {"subset": subset, "qid": f"{subset}-{i}", "context": f"context {i}", "question": f"q {i}",
                "answers": [f"a {i}"], "detected_answers": [{"text": f"a {i}", "char_spans": [[0, 2]]}]}
    rows = [row("SQuAD", 0), row("NaturalQuestionsShort", 1), row("HotpotQA", 2), row("NaturalQuestionsShort", 3)]
    fake = FakeHub(rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    nq = load_dataset("nq", split="test")
    assert fake.calls[0] == (("mrqa-workshop/mrqa", "plain_text"), {"split": "validation"})
    assert [ex.id for ex in nq] == ["NaturalQuestionsShort-1", "NaturalQuestionsShort-3"]
    hp = load_dataset("HotpotQA")
    assert [ex.answers for ex in hp] == [["a 2"]]


def test_hub_offline_message(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub([], exc=ConnectionError("no route to host")))
    with pytest.raises(RuntimeError, match=r"could not load .squad. from the hub .*offline.*local file path"):
        load_dataset("squad")


# --- toy data (written elsewhere; skipped until it exists) ------------------------------------
@pytest.mark.parametrize("name", ["toy-open", "toy-conflict", "toy-memory"])
def test_toy_names_delegate(name):
    try:
        importlib.import_module("routerlens_interp.toy.data")
    except ImportError:
        pytest.skip("routerlens_interp.toy.data not written yet")
    data = load_dataset(name, split="test", limit=3)
    assert 0 < len(data) <= 3 and all(isinstance(ex, QAExample) for ex in data)
    toy = importlib.import_module("routerlens_interp.toy.data")
    assert [ex.id for ex in data] == [ex.id for ex in toy.toy_dataset(name, "test")[:3]]
    # a seed shuffles our copy but never changes the toy world
    shuffled = load_dataset(name, split="test", seed=5)
    assert sorted(ex.id for ex in shuffled) == sorted(ex.id for ex in toy.toy_dataset(name, "test"))
    assert len(load_dataset(name, split="validation", limit=2)) == 2  # our name for the toy's "dev"
