"""Splits: dev never meets test, on fixtures with each hub set's real schema and split layout
(``datasets.load_dataset`` monkeypatched), on directories of split files and on single files."""
import hashlib
import json
import random
from pathlib import Path

import datasets
import pytest

from routerlens_interp.data import (CONFIQA_URL, DEV_FROM_TRAIN, HUB_DATASETS, SPLIT_SALT, check_disjoint,
                                    load_dataset, train_dev_data)
from routerlens_interp.errors import UserError
from routerlens_interp.examples import QAExample

FIX = Path(__file__).parent / "fixtures"
HUB = FIX / "hub"
PAPER = FIX / "routerlens_nq_swap"


def rows(name):
    p = HUB / name
    return json.loads(p.read_text()) if p.suffix == ".json" else [json.loads(l) for l in p.read_text().splitlines()]


class FakeHub:
    """``datasets.load_dataset`` for the hub sets: (path, split) → that split's fixture rows."""

    TABLE = {("rajpurkar/squad", "train"): "squad_train.jsonl",
             ("rajpurkar/squad", "validation"): "squad_validation.jsonl",
             ("pminervini/NQ-Swap", "dev"): "nq_swap_dev.jsonl",
             ("mrqa-workshop/mrqa", "train"): "mrqa_train.jsonl",
             ("mrqa-workshop/mrqa", "validation"): "mrqa_validation.jsonl",
             ("json", "train"): "ConFiQA-MC.json"}

    def __init__(self, shuffle=None, drop=()):
        self.calls, self.shuffle, self.drop = [], shuffle, drop

    def __call__(self, path, *config, split=None, **kw):
        self.calls.append(((path, *config), {"split": split, **kw}))
        if path == "mrqa-workshop/mrqa" and config != ("plain_text",):
            raise ValueError("Config name is missing")
        if (path, split) not in self.TABLE:
            known = sorted(s for p, s in self.TABLE if p == path)
            raise ValueError(f'Unknown split "{split}". Should be one of {known}.')
        got = rows(self.TABLE[path, split])
        if self.shuffle is not None:
            random.Random(self.shuffle).shuffle(got)
        got = [{k: v for k, v in r.items() if k not in self.drop} for r in got]
        return datasets.Dataset.from_list(got)


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


def key(ex):
    return " ".join(ex.context.split()) + "\x1f" + " ".join(ex.question.split())


def ranked(keys):
    """The documented rule, restated: distinct keys ordered by sha256(SPLIT_SALT + key)."""
    return sorted(set(keys), key=lambda k: hashlib.sha256((SPLIT_SALT + k).encode()).digest())


# --- one-split hub sets: NQ-Swap, ConFiQA ---------------------------------------------------------
def test_nq_swap_dev_is_a_disjoint_part_not_everything(hub):
    parts = {s: load_dataset("nq-swap", split=s) for s in ("train", "dev", "test")}
    everything = load_dataset("nq-swap", split="all")
    assert all(c[1]["split"] == "dev" for c in hub.calls) and hub.calls[0][0] == ("pminervini/NQ-Swap",)
    assert len(everything) == 13  # the fixture's rows; one example twice
    assert len(parts["dev"]) < len(everything)  # the old loader gave all 13 rows for "dev"
    keys = {s: [key(e) for e in p] for s, p in parts.items()}
    assert not set(keys["dev"]) & set(keys["test"]) and not set(keys["train"]) & (set(keys["dev"]) | set(keys["test"]))
    assert sorted(k for p in keys.values() for k in p) == sorted(key(e) for e in everything)
    order = ranked(key(e) for e in everything)  # 12 distinct: test = round(1.2) = 1, dev = 1
    assert set(keys["test"]) == {order[0]} and set(keys["dev"]) == {order[1]}
    dup = [k for k in keys["train"] + keys["dev"] + keys["test"] if [key(e) for e in everything].count(k) == 2]
    assert len(dup) == 2 and len(set(dup)) == 1  # both copies in one part
    assert [e.question for e in load_dataset("nq-swap", split="validation")] == [e.question for e in parts["dev"]]
    # real schema: list-valued answers, the substituted context, the memorised answer
    ex = next(e for e in everything if e.question == "who painted the mona lisa")
    assert ex.answers == ["Raphael"] and ex.memory_answer == "Leonardo da Vinci"
    assert ex.meta["memory_answers"] == ["Leonardo da Vinci", "da Vinci"]
    assert ex.context == "<P> The Mona Lisa is a half - length portrait painting by the Italian artist Raphael . </P>"
    # the same rows whatever the hub's row order and whatever --seed (seed only shuffles a copy)
    assert sorted(e.question for e in load_dataset("nq-swap", split="dev", seed=3)) == \
        sorted(e.question for e in parts["dev"])


def test_nq_swap_cut_does_not_depend_on_row_order(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub())
    a = {s: sorted(key(e) for e in load_dataset("nq-swap", split=s)) for s in ("train", "dev", "test")}
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(shuffle=7))
    b = {s: sorted(key(e) for e in load_dataset("nq-swap", split=s)) for s in ("train", "dev", "test")}
    assert a == b


def test_unknown_split_is_refused(hub):
    for name in ("nq-swap", "squad", FIX / "canonical.jsonl", PAPER):
        with pytest.raises(UserError, match="train, dev \\(alias validation\\), test, or all"):
            load_dataset(name, split="holdout")


def test_confiqa_means_confiqa_mc_from_a_pinned_commit(hub):
    assert "/main/" not in CONFIQA_URL and "/master/" not in CONFIQA_URL  # no branch: a commit
    assert "557dadeeb9f47407890a5626128ca99907770b22" in CONFIQA_URL
    data = load_dataset("confiqa", split="all")
    (args, kwargs), = hub.calls
    assert args == ("json",) and kwargs["data_files"] == CONFIQA_URL.format(subset="MC")
    assert kwargs["data_files"].endswith("/ConFiQA/ConFiQA-MC.json")
    assert HUB_DATASETS["confiqa"].data_files == HUB_DATASETS["confiqa-mc"].data_files == "MC"
    assert {HUB_DATASETS[n].data_files for n in ("confiqa-qa", "confiqa-mr", "confiqa-mc")} == {"QA", "MR", "MC"}
    ex = data[0]  # the README's record: cf_context, cf_answer + cf_alias, orig_answer + orig_alias
    assert ex.question == "Who is the composer of Bad Boys for Life?"
    assert ex.answers == ["Petri Alanko", "Petri Rainer Mikael Alanko"] and ex.memory_answer == "Lorne Balfe"
    assert "composed by Petri Alanko" in ex.context and ex.meta["memory_answers"][1] == "Lorne David Roderick Balfe"
    parts = [load_dataset("confiqa", split=s) for s in ("train", "dev", "test")]
    assert [len(p) for p in parts] == [6, 1, 1] and sum(len(p) for p in parts) == len(data)  # 8 distinct records


# --- two-split hub sets: SQuAD, NQ, HotpotQA ------------------------------------------------------
def test_squad_dev_is_carved_from_train_and_test_is_validation(hub):
    test, dev, train = (load_dataset("squad", split=s) for s in ("test", "dev", "train"))
    assert [c[1]["split"] for c in hub.calls] == ["validation", "train", "train"]
    assert [e.id for e in test] == [r["id"] for r in rows("squad_validation.jsonl")]
    hub_train = [r["id"] for r in rows("squad_train.jsonl")]
    assert sorted(e.id for e in dev + train) == sorted(hub_train) and not {e.id for e in dev} & {e.id for e in train}
    assert len(dev) == max(1, round(DEV_FROM_TRAIN * len(hub_train)))  # the old loader: dev = validation = test
    assert not {key(e) for e in dev} & {key(e) for e in test}
    assert [e.id for e in load_dataset("squad", split="validation")] == [e.id for e in dev]
    assert len(load_dataset("squad", split="all")) == len(hub_train) + len(test)
    # white space stripped (a template that trims would change the prompt); offsets follow the context
    q = next(e for e in train + dev if e.answers == ["nine"])
    assert q.question == "How many student news outlets are at Notre Dame?"
    b = next(e for e in train + dev if e.answers == ["Houston, Texas"])
    assert b.question == "In what city and state did Beyonce  grow up?" and b.context == b.context.strip()
    assert b.context[b.meta["answer_start"][0]:].startswith("Houston, Texas")


@pytest.mark.parametrize("name,subset", [("nq", "NaturalQuestionsShort"), ("hotpotqa", "HotpotQA")])
def test_mrqa_subset_and_splits(hub, name, subset):
    test, dev, train = (load_dataset(name, split=s) for s in ("test", "dev", "train"))
    assert all(c[0] == ("mrqa-workshop/mrqa", "plain_text") for c in hub.calls)
    want_test = [r["qid"] for r in rows("mrqa_validation.jsonl") if r["subset"] == subset]
    want_train = [r["qid"] for r in rows("mrqa_train.jsonl") if r["subset"] == subset]
    assert [e.id for e in test] == want_test
    assert sorted(e.id for e in dev + train) == sorted(want_train) and len(dev) == 1
    assert all(e.meta["subset"] == subset for e in test + dev + train)
    ex = next(e for e in train + dev if e.id == want_train[0])
    r = next(r for r in rows("mrqa_train.jsonl") if r["qid"] == want_train[0])
    assert ex.answers == r["answers"] and ex.context == r["context"].strip()


def test_mrqa_without_subset_column_is_refused(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(drop=("subset",)))
    with pytest.raises(UserError, match="no 'subset' column.*NaturalQuestionsShort"):
        load_dataset("nq", split="test")  # the old loader returned every MRQA set's rows


def test_mrqa_rows_outside_the_subset_are_never_materialised(hub, monkeypatch):
    seen = []
    real_iter = datasets.Dataset.__iter__

    def counting(self):
        for r in real_iter(self):
            seen.append(r.get("subset"))
            yield r
    monkeypatch.setattr(datasets.Dataset, "__iter__", counting)
    load_dataset("hotpotqa", split="test")
    assert seen == ["HotpotQA"]


# --- why a hub load failed ------------------------------------------------------------------------
def _gated():
    import httpx
    from huggingface_hub.errors import GatedRepoError

    req = httpx.Request("GET", "https://huggingface.co/api/datasets/x")
    try:
        raise GatedRepoError("401 Client Error", response=httpx.Response(401, request=req))
    except GatedRepoError as err:
        try:
            raise datasets.exceptions.DatasetNotFoundError("Dataset 'x' is a gated dataset on the Hub.") from err
        except Exception as outer:
            return outer


@pytest.mark.parametrize("exc,kind,fix", [
    (ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)"), "offline",
     "HF_DATASETS_OFFLINE"),
    (datasets.exceptions.DatasetNotFoundError("Dataset 'rajpurkar/squad' doesn't exist on the Hub"), "not found",
     "check the name"),
    (FileNotFoundError("Unable to find 'https://raw.githubusercontent.com/...'"), "not found", "check the name"),
    ("gated", "gated", "hf auth login"),
])
def test_hub_failures_are_told_apart(monkeypatch, exc, kind, fix):
    exc = _gated() if exc == "gated" else exc

    def fail(*a, **k):
        raise exc
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(UserError) as err:
        load_dataset("squad", split="test")
    msg = str(err.value)
    assert f": {kind} (" in msg and fix in msg and "rajpurkar/squad" in msg
    assert "offline?" not in msg


# --- directories of split files (RouterLens' data/<set>/) ----------------------------------------
def test_paper_split_files_load_as_splits():
    for split, n in (("train", 6), ("dev", 4), ("validation", 4), ("test", 4)):
        data = load_dataset(PAPER, split=split)
        want = json.loads((PAPER / f"{'dev' if split == 'validation' else split}.json").read_text())
        assert [e.question for e in data] == [r["question"].strip() for r in want]
        assert [e.answers for e in data] == [[r["answer"]] for r in want]
        assert [e.context for e in data] == [r["context"].strip() for r in want]
        assert all(e.memory_answer is None for e in data)
    assert [e.question for e in load_dataset(PAPER)] == [e.question for e in load_dataset(PAPER, split="test")]
    assert len(load_dataset(PAPER, split="all")) == 14


def test_missing_split_file_lists_what_exists(tmp_path):
    (tmp_path / "train.json").write_text((PAPER / "train.json").read_text())
    test = json.loads((PAPER / "test.json").read_text())
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    assert len(load_dataset(tmp_path, split="test")) == 4
    with pytest.raises(UserError, match=r"no dev split file \(dev.json.*holds train \(train.json\), test \(test.jsonl"):
        load_dataset(tmp_path, split="dev")


# --- a single file: whole without a split, disjoint seeded parts with one --------------------------
def _file(tmp_path, n=40):
    recs = [{"context": f"Person {i} lives in city {i}.", "question": f"Where does person {i} live?",
             "answer": f"city {i}"} for i in range(n)]
    p = tmp_path / "f.json"
    p.write_text(json.dumps(recs))
    return p


def test_single_file_named_splits_are_disjoint_parts(tmp_path):
    p = _file(tmp_path)
    whole = load_dataset(p)
    assert len(whole) == 40 and load_dataset(p, split="all") == whole
    parts = {s: load_dataset(p, split=s) for s in ("train", "dev", "test")}
    assert [len(parts[s]) for s in ("train", "dev", "test")] == [32, 4, 4]  # the old loader: 40 each
    ids = {s: [e.id for e in v] for s, v in parts.items()}
    assert sorted(sum(ids.values(), []), key=int) == [e.id for e in whole]
    order = ranked(key(e) for e in whole)
    assert {key(e) for e in parts["test"]} == set(order[:4]) and {key(e) for e in parts["dev"]} == set(order[4:8])
    assert ids["train"] == sorted(ids["train"], key=int)  # the file's order kept within a part


def test_too_small_a_file_cannot_be_cut(tmp_path):
    p = _file(tmp_path, n=2)
    assert len(load_dataset(p)) == 2
    with pytest.raises(UserError, match="too few"):
        load_dataset(p, split="test")


# --- white space -----------------------------------------------------------------------------------
def test_white_space_is_stripped_on_every_path(tmp_path, hub):
    rec = {"context": "  Paris is in France.\n", "question": "Where is Paris? ", "answer": " France "}
    (tmp_path / "d").mkdir()
    for name in ("train", "dev", "test"):
        (tmp_path / "d" / f"{name}.json").write_text(json.dumps([rec]))
    (tmp_path / "f.jsonl").write_text(json.dumps(rec) + "\n")
    for ex in load_dataset(tmp_path / "f.jsonl") + load_dataset(tmp_path / "d", split="dev"):
        assert (ex.context, ex.question, ex.answers) == ("Paris is in France.", "Where is Paris?", ["France"])
    for ex in load_dataset("nq-swap", split="all"):
        assert ex.context == ex.context.strip() and ex.meta["original_context"].endswith("</P>")


# --- the runtime check ----------------------------------------------------------------------------
def test_check_disjoint():
    a = QAExample("Paris is  in France.", "Where is Paris?", ["France"], meta={"record": 7})
    b = QAExample("Paris is in France.", " Where is\tParis?", ["France"])
    c = QAExample("Rome is in Italy.", "Where is Rome?", ["Italy"])
    assert check_disjoint([c], [b], "x") == [c]
    with pytest.raises(UserError, match=r"x: 1 of 2 dev examples .*dev record 7.*--drop-dev-overlap"):
        check_disjoint([a, c], [b], "x")
    assert check_disjoint([a, c], [b], "x", drop=True) == [c]
    # a different answer does not make a different example: the question and its context are what is seen
    assert check_disjoint([QAExample(b.context, b.question, ["Europe"])], [a], drop=True) == []


def test_paper_nq_swap_dev_and_test_share_one_example():
    dev, test = load_dataset(PAPER, split="dev"), load_dataset(PAPER, split="test")
    with pytest.raises(UserError, match="1 of 4 dev examples"):
        check_disjoint(dev, test, "nq-swap")
    assert len(check_disjoint(dev, test, drop=True)) == 3


def test_train_dev_data(tmp_path, hub):
    p = _file(tmp_path)
    d = train_dev_data(p)
    assert [e.id for e in d.train] == [e.id for e in load_dataset(p, split="train")]
    assert [e.id for e in d.dev] == [e.id for e in load_dataset(p, split="dev")] and d.n_test == 4
    assert any("--split test" in n for n in d.notes)
    d = train_dev_data("nq-swap", limit=3)
    assert len(d.train) == 3 and d.dev == load_dataset("nq-swap", split="dev") and d.n_test == 1
    with pytest.raises(UserError, match="test split of nq-swap"):
        train_dev_data("nq-swap", dev_split="test")
    with pytest.raises(UserError, match="--split all"):
        train_dev_data("nq-swap", split="all")
    with pytest.raises(UserError, match="1 of 4 dev examples"):
        train_dev_data(PAPER)
    d = train_dev_data(PAPER, drop_dev_overlap=True)
    assert len(d.train) == 6 and len(d.dev) == 3 and any("dropped 1 of 4" in n for n in d.notes)
    # --dev given: a file --data without --split trains whole; --dev is checked against --data's test split
    d = train_dev_data(p, dev=PAPER / "dev.json")
    assert len(d.train) == 40 and len(d.dev) == 4 and d.n_test is None
    with pytest.raises(UserError, match="test split of .*routerlens_nq_swap"):
        train_dev_data(PAPER, dev=PAPER / "test.json")


def test_a_bare_name_is_the_hub_set_even_beside_a_directory_of_that_name(tmp_path, hub, monkeypatch):
    (tmp_path / "nq-swap").mkdir()
    for s in ("train", "dev", "test"):
        (tmp_path / "nq-swap" / f"{s}.json").write_text((PAPER / f"{s}.json").read_text())
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("nq-swap", split="all")) == 13 and hub.calls[-1][0] == ("pminervini/NQ-Swap",)
    assert len(load_dataset("./nq-swap", split="all")) == 14  # the directory
    assert train_dev_data("./nq-swap", drop_dev_overlap=True).n_test == 4


def test_mrqa_hub_shape_falls_back_on_detected_answers():
    """The hub's ``detected_answers`` is a dict of lists (a sequence feature), not a list of dicts."""
    from routerlens_interp.data import records_to_examples

    r = dict(rows("mrqa_train.jsonl")[1], answers=[])
    assert isinstance(r["detected_answers"], dict) and r["detected_answers"]["text"] == ["1889"]
    (ex,) = records_to_examples([r])
    assert ex.answers == ["1889"] and ex.id == "nq-t0" and ex.meta["subset"] == "NaturalQuestionsShort"


@pytest.mark.parametrize("reachable,kind", [(True, "not found"), (False, "offline")])
def test_confiqa_url_missing_or_offline(monkeypatch, reachable, kind):
    """fsspec answers an unreachable URL with the FileNotFoundError of a missing one: the host decides."""
    import routerlens_interp.data.hub as hub_mod

    def fail(*a, **k):
        raise FileNotFoundError(f"Unable to find '{k['data_files']}'")
    monkeypatch.setattr(datasets, "load_dataset", fail)
    monkeypatch.setattr(hub_mod, "_reachable", lambda url: reachable)
    with pytest.raises(UserError, match=f"from GitHub .*ConFiQA-QA.json.*: {kind} \\("):
        load_dataset("confiqa-qa", split="all")
