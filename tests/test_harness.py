"""rl.harness: lm-evaluation-harness on the in-memory model, offline, with a task of our own."""
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'routerlens_interp[harness]'")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.errors import UserError  # noqa: E402

DOCS = [
    {"question": "Alice was born in Paris. Where was Alice born?", "choices": ["Paris", "Rome", "Berlin"], "answer": 0},
    {"question": "Bob lives in Rome. Where does Bob live?", "choices": ["Paris", "Rome", "Berlin"], "answer": 1},
    {"question": "Carol works in Berlin as a baker. Who works in Berlin?", "choices": ["Alice", "Bob", "Carol"],
     "answer": 2},
    {"question": "When was Bob Jones born?", "choices": ["1950", "1972"], "answer": 1},
]

TASK = """task: rl_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, monkeypatch_module):
    d = tmp_path_factory.mktemp("harness")
    (d / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOCS))
    (d / "tasks").mkdir()
    (d / "tasks" / "rl_tiny_choice.yaml").write_text(TASK.format(data=d / "docs.jsonl"))
    lm = rl.load(tiny.save("olmoe", d / "model"))
    return lm, str(d / "tasks")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_DATASETS_OFFLINE", "1")  # nothing may come from the network
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield mp
    mp.undo()


@torch.no_grad()
def direct(lm, context, continuation):
    """Independent log P(continuation | context): one unpadded forward, the harness's encoding rule."""
    tok = lm.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    lp = torch.log_softmax(lm.hf(input_ids=torch.tensor([whole])).logits[0].double(), -1)
    return float(sum(lp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def _run(lm, path):
    return rl.harness(lm, ["rl_tiny_choice"], include_path=path, include_defaults=False, log_samples=True,
                      progress=False)


def _expected_acc(lm):
    hits = []
    for doc in DOCS:
        lps = [direct(lm, doc["question"] + "\nAnswer:", " " + c) for c in doc["choices"]]
        hits.append(max(range(len(lps)), key=lps.__getitem__) == doc["answer"])
    return sum(hits) / len(hits), lps


def test_harness_equals_direct_loglikelihood_and_mask_changes_it(setup):
    lm, path = setup
    plain = _run(lm, path)
    acc, _ = _expected_acc(lm)
    assert plain["results"]["rl_tiny_choice"]["acc,none"] == pytest.approx(acc)
    samples = sorted(plain["samples"]["rl_tiny_choice"], key=lambda s: s["doc_id"])
    for s, doc in zip(samples, DOCS):
        got = [r[0][0] for r in s["resps"]]
        want = [direct(lm, doc["question"] + "\nAnswer:", " " + c) for c in doc["choices"]]
        assert got == pytest.approx(want, abs=1e-4)
    with rl.mask_experts(lm, {l: [0, 1, 2, 3] for l in lm.spec.moe_layers}):
        masked = _run(lm, path)
        m_acc, _ = _expected_acc(lm)
    m_samples = sorted(masked["samples"]["rl_tiny_choice"], key=lambda s: s["doc_id"])
    assert masked["results"]["rl_tiny_choice"]["acc,none"] == pytest.approx(m_acc)
    assert [r[0][0] for r in m_samples[0]["resps"]] != pytest.approx([r[0][0] for r in samples[0]["resps"]], abs=1e-3)


def test_generate_until_and_rolling_match_direct_decoding(setup):
    from lm_eval.api.instance import Instance

    lm, _ = setup
    h = rl.HarnessLM(lm, progress=False)
    ctx = "Question: Where was Alice Smith born? Answer:"
    req = Instance(request_type="generate_until", doc={}, arguments=(ctx, {"until": ["\n"], "max_gen_toks": 6}), idx=0)
    (text,) = h.generate_until([req])
    ids = lm.tokenizer(ctx, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # independent greedy loop
        seq = list(ids)
        for _ in range(6):
            nxt = int(lm.hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == lm.tokenizer.eos_token_id:
                break
            seq.append(nxt)
    assert text == lm.tokenizer.decode(seq[len(ids):], skip_special_tokens=True).split("\n")[0]
    roll = Instance(request_type="loglikelihood_rolling", doc={}, arguments=("Bob lives in Rome.",), idx=0)
    (lp,) = h.loglikelihood_rolling([roll])
    toks = lm.tokenizer("Bob lives in Rome.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        full = [lm.tokenizer.eos_token_id] + toks
        logp = torch.log_softmax(lm.hf(input_ids=torch.tensor([full])).logits[0].double(), -1)
    assert lp == pytest.approx(float(sum(logp[i, full[i + 1]] for i in range(len(toks)))), abs=1e-4)


def test_unknown_task_is_a_clear_error(setup):
    lm, path = setup
    import routerlens_interp.evaluation.lmeval  # noqa: F401  (importing the module must not shadow the function)

    assert rl.harness.__name__ == "harness" and callable(rl.harness)
    with pytest.raises(UserError, match="unknown lm-eval task"):
        rl.harness(lm, ["no_such_task_xyz"], include_path=path, include_defaults=False)


def test_lm_evals_own_mmlu_task_equals_rl_choice_accuracy(setup, monkeypatch):
    """lm-eval's built-in ``mmlu_abstract_algebra`` (5-shot from dev) on our fixture rows gives exactly the
    log-likelihoods of rl.choice_accuracy: the two implementations share the prompt and the scoring."""
    import datasets

    lm, _ = setup
    fix = Path(__file__).parent / "fixtures"
    rows = lambda n: [json.loads(l) for l in (fix / n).read_text().splitlines()]
    real = datasets.load_dataset

    def fake(path=None, name=None, *a, **k):
        if path != "cais/mmlu":
            return real(path, name, *a, **k)
        assert name == "abstract_algebra"
        dev = datasets.Dataset.from_list(rows("mmlu_dev.jsonl"))
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows("mmlu_test.jsonl")), "dev": dev,
                                     "validation": dev})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    res = rl.harness(lm, ["mmlu_abstract_algebra"], num_fewshot=5, log_samples=True, progress=False)
    samples = sorted(res["samples"]["mmlu_abstract_algebra"], key=lambda s: s["doc_id"])
    test, dev = rl.load_dataset(fix / "mmlu_test.jsonl"), rl.load_dataset(fix / "mmlu_dev.jsonl")
    with pytest.warns(UserWarning):  # the tiny model's 128-token window cuts both the same way
        mine = rl.choice_accuracy(lm, test, shots=5, fewshot=dev)
    from routerlens_interp.evaluation.choice import render_choice

    assert samples[0]["arguments"][0][0] == render_choice(test[0], dev)[0]
    for s, lps in zip(samples, mine["logprobs"]):
        assert [r[0][0] for r in s["resps"]] == pytest.approx(lps, abs=1e-5)
    assert res["results"]["mmlu_abstract_algebra"]["acc,none"] == pytest.approx(mine["accuracy"] / 100)


def test_lm_evals_memo_trap_task_equals_rl_choice_accuracy(setup, monkeypatch):
    """lm-eval's ``inverse_scaling_memo_trap`` (endings scored right after the prompt) = rl.choice_accuracy."""
    import datasets

    lm, _ = setup
    data = rl.load_dataset(Path(__file__).parent / "fixtures" / "memotrap.csv")
    real = datasets.load_dataset

    def fake(path=None, name=None, *a, **k):
        if path != "Albertmade/memo-trap":
            return real(path, name, *a, **k)
        rows = [{"prompt": ex.prompt, "classes": ex.choices, "answer_index": ex.label, "round": 1} for ex in data]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    res = rl.harness(lm, ["inverse_scaling_memo_trap"], log_samples=True, progress=False)
    samples = sorted(res["samples"]["inverse_scaling_memo_trap"], key=lambda s: s["doc_id"])
    mine = rl.choice_accuracy(lm, data)
    for s, lps in zip(samples, mine["logprobs"]):
        assert [r[0][0] for r in s["resps"]] == pytest.approx(lps, abs=1e-5)
    r = res["results"]["inverse_scaling_memo_trap"]
    assert (r["acc,none"], r["acc_norm,none"]) == pytest.approx((mine["accuracy"] / 100, mine["accuracy_norm"] / 100))


def test_forgetting_through_the_harness(setup):
    lm, path = setup

    class MaskAdapter:  # anything with .applied(lm) is an adapter to rl.forgetting
        def applied(self, lm):
            return rl.mask_experts(lm, {l: [0, 1, 2, 3] for l in lm.spec.moe_layers})

    f = rl.forgetting(lm, {"masked": MaskAdapter()}, tasks=["rl_tiny_choice"], include_path=path,
                      include_defaults=False)
    base = 100 * _run(lm, path)["results"]["rl_tiny_choice"]["acc,none"]
    with MaskAdapter().applied(lm):
        masked = 100 * _expected_acc(lm)[0]
    assert f["base"] == pytest.approx(base) and f["adapters"]["masked"]["accuracy"] == pytest.approx(masked)
    assert f["n"] == {"rl_tiny_choice": 4} and f["tasks"] == ["rl_tiny_choice"]
    with pytest.raises(UserError, match="exactly one of"):
        rl.forgetting(lm, {}, data=None)
