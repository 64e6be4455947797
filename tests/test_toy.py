"""The toy world, data sets, tokenizer, pretraining recipe and shipped weights."""
from __future__ import annotations

import json
import random

import pytest
import torch

from routerlens_interp.toy import TOY_DATASETS, WEIGHTS_DIR, toy_dataset
from routerlens_interp.toy.data import _BUILDERS, SIZES, TOY2_DATASETS, bag_solvable, get_world, make_bound_context
from routerlens_interp.toy.world import ATTRIBUTES, VALUES, build_world

SPLITS = ("train", "dev", "test")


def test_world_deterministic():
    a, b = build_world(0), build_world(0)
    assert a == b
    assert build_world(1) != a
    names = [p.name for p in a.known] + a.unseen_names
    assert len(set(names)) == len(names)
    assert all(set(p.facts) == set(ATTRIBUTES) for p in a.known)


@pytest.mark.parametrize("name", TOY_DATASETS + TOY2_DATASETS)
def test_dataset_deterministic_and_sized(name):
    for split in SPLITS:
        d1 = toy_dataset(name, split)
        rng = random.Random(f"toy-data-0-{name}-{split}")
        d2 = _BUILDERS[name](build_world(0), split, SIZES[name][split], rng)  # a fresh build, no cache
        assert [e.to_dict() for e in d1] == [e.to_dict() for e in d2]
        assert len(d1) == SIZES[name][split]
        assert len({e.id for e in d1}) == len(d1)


@pytest.mark.parametrize("name", TOY_DATASETS + TOY2_DATASETS)
def test_splits_share_no_question(name):
    qs = {s: {e.question for e in toy_dataset(name, s)} for s in SPLITS}
    assert not (qs["train"] & qs["dev"]) and not (qs["train"] & qs["test"]) and not (qs["dev"] & qs["test"])


def test_answers_occur_in_context():
    for split in SPLITS:
        for e in toy_dataset("toy-open", split):
            assert e.answer in e.context and e.memory_answer is None and not e.meta["known"]
        for e in toy_dataset("toy-conflict", split):
            assert e.answer in e.context
            assert e.memory_answer != e.answer and e.memory_answer not in e.context.split()
            assert e.memory_answer in VALUES[e.meta["attr"]] and e.answer in VALUES[e.meta["attr"]]
        for e in toy_dataset("toy-memory", split):
            assert e.context == ""


def test_world_v2_contexts_need_binding():
    """Every v2 context holds 2-4 distinct values of the asked type (the gold among them, never the
    memorised one): gathering 'the value of the asked type' cannot answer any of them."""
    known = {p.name: p for p in get_world().known}
    for name in ("toy2-open", "toy2-conflict"):
        for e in toy_dataset(name, "test"):
            words = e.context.replace(".", " ").replace(",", " ").split()
            vals = [w for w in words if w in VALUES[e.meta["attr"]]]
            assert 2 <= len(vals) == len(set(vals)) <= 4 and e.answer in vals, e.context
            if e.memory_answer is not None:
                assert e.memory_answer not in words and known[e.meta["person"]].facts[e.meta["attr"]] == e.memory_answer
    rng, world = random.Random(1), get_world()
    names = world.unseen["test"]
    facts = {a: VALUES[a][0] for a in ATTRIBUTES} | {"city": "Paris"}
    ctx, triples = make_bound_context(rng, world, names[0], "city", "Paris", facts, 3, 2,
                                      names[1:])
    assert sum(a == "city" for _, a, _ in triples) == 3 and len(triples) == 5 and not bag_solvable(triples, "city")
    assert bag_solvable([("A", "city", "Rome"), ("A", "year", "1950")], "city")


def test_memory_answers_are_the_memorised_facts():
    known = {p.name: p for p in get_world().known}
    for e in toy_dataset("toy-conflict", "test"):
        assert known[e.meta["person"]].facts[e.meta["attr"]] == e.memory_answer
    for e in toy_dataset("toy-memory", "test"):
        assert known[e.meta["person"]].facts[e.meta["attr"]] == e.answer
    unseen = set(get_world().unseen_names)
    assert all(e.meta["person"] in unseen for e in toy_dataset("toy-open", "test"))


def test_prompts_are_short_and_pretraining_has_no_conflicts():
    from transformers import PreTrainedTokenizerFast

    from routerlens_interp.prompts.templates import plain_prompt
    from routerlens_interp.toy.corpus import DocSampler

    if not (WEIGHTS_DIR / "tokenizer.json").exists():
        pytest.skip("no shipped tokenizer")
    tok = PreTrainedTokenizerFast.from_pretrained(WEIGHTS_DIR)
    for name in TOY_DATASETS + TOY2_DATASETS:
        assert max(len(tok.encode(plain_prompt(e.context, e.question))) for e in toy_dataset(name, "test")) <= 100
    world = get_world()
    facts = {(p.name, a): v for p in world.known for a, v in p.facts.items()}
    known = {p.name for p in world.known}
    vtype = {v: a for a in ATTRIBUTES for v in VALUES[a]}
    n_checked = 0
    for i in range(4000):  # every fact stated about a memorised person is its true value (v1 and v2 layouts)
        if i % 2000 == 0:
            s, rng = DocSampler(world, p_present=0.8, p_hard=0.5, layout=("v1", "v2")[i // 2000]), random.Random(0)
        kind, prompt, target = s.sample(rng)
        body = prompt.split("\n\nQuestion:\n")
        for sent in body[0].replace("Context:\n", "\n").split("\n")[-1].split(". "):
            words = sent.replace(".", " ").replace(",", " ").split()
            names = [w for w in words if w in known]
            vals = [w for w in words if w in vtype]
            if names and vals:
                assert facts[(names[0], vtype[vals[0]])] == vals[0], sent
                n_checked += 1
        if kind in ("memory", "known"):
            q = body[1].split("\n")[0]
            name = next(w for w in q.replace("?", " ").split() if w in known)
            assert facts[(name, vtype[target.strip()])] == target.strip()
    assert n_checked > 1500


def test_names_and_values_are_single_tokens():
    from transformers import PreTrainedTokenizerFast

    from routerlens_interp.toy.tokenizer import single_token_report

    if not (WEIGHTS_DIR / "tokenizer.json").exists():
        pytest.skip("no shipped tokenizer")
    tok = PreTrainedTokenizerFast.from_pretrained(WEIGHTS_DIR)
    assert single_token_report(tok, get_world().all_words()) == []
    assert tok.eos_token and tok.pad_token and tok.decode(tok.encode("any text 123 ü")) == "any text 123 ü"


def test_recipe_few_steps(tmp_path):
    from transformers import OlmoeForCausalLM

    from routerlens_interp.toy import pretrain

    out = tmp_path / "m"
    pretrain.main(["--out", str(out), "--steps", "4", "--batch-size", "4", "--hidden", "32", "--layers", "2",
                   "--heads", "2", "--experts", "4", "--intermediate", "16", "--eval-every", "2", "--eval-n", "4",
                   "--final-eval-n", "4", "--ckpt-every", "2", "--threads", "1"])
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("open_em" in r and "loss" in r for r in logs)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["steps"] == 4 and recipe["corpus_tokens"] > 0
    m = OlmoeForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert m.config.output_router_logits is False
    o = m(torch.tensor([[1, 2, 3]]), output_attentions=True)
    assert o.attentions[0].shape[-1] == 3
    # resume: a longer run continues from the checkpoint
    pretrain.main(["--out", str(out), "--steps", "6", "--batch-size", "4", "--hidden", "32", "--layers", "2",
                   "--heads", "2", "--experts", "4", "--intermediate", "16", "--eval-every", "2", "--eval-n", "4",
                   "--final-eval-n", "4", "--ckpt-every", "2", "--threads", "1"])
    assert json.loads((out / "recipe.json").read_text())["steps"] == 6


@pytest.mark.skipif(not (WEIGHTS_DIR / "model.safetensors").exists(), reason="no shipped weights")
def test_shipped_weights_reproduce_recorded_dev_scores():
    from transformers import OlmoeForCausalLM, PreTrainedTokenizerFast

    from routerlens_interp.toy.evaluate import toy_metrics

    recipe = json.loads((WEIGHTS_DIR / "recipe.json").read_text())
    size = sum(f.stat().st_size for f in WEIGHTS_DIR.iterdir())
    assert size <= 20 * 2**20
    m = OlmoeForCausalLM.from_pretrained(WEIGHTS_DIR)
    assert m.config.output_router_logits is False
    tok = PreTrainedTokenizerFast.from_pretrained(WEIGHTS_DIR)
    got = toy_metrics(m, tok, "dev", n=100)
    want = recipe["dev_metrics_n100"]
    for k in ("open_em", "recall", "conflict_em", "memory_rate"):
        assert abs(got[k] - want[k]) <= 2.0, (k, got[k], want[k])


def test_recipe_world_v2_marks_the_model(tmp_path, monkeypatch):
    """``--world v2`` trains on v2 contexts, evaluates on toy2-* data and says so in the saved config,
    which is how the demo picks toy2-* data for the model."""
    from transformers import AutoConfig

    from routerlens_interp.toy import corpus, pretrain
    from routerlens_interp.toy.evaluate import model_world, toy_prefix

    layouts, seen = [], []
    real_init = corpus.DocSampler.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        layouts.append(self.layout)

    monkeypatch.setattr(corpus.DocSampler, "__init__", spy)
    real_ds = pretrain.toy_metrics.__globals__["toy_prefix"]
    monkeypatch.setitem(pretrain.toy_metrics.__globals__, "toy_prefix", lambda w: seen.append(w) or real_ds(w))
    out = tmp_path / "v2"
    pretrain.main(["--out", str(out), "--world", "v2", "--steps", "2", "--batch-size", "2", "--hidden", "32",
                   "--layers", "1", "--heads", "2", "--experts", "4", "--intermediate", "8", "--eval-every", "2",
                   "--eval-n", "2", "--final-eval-n", "2", "--ckpt-every", "2", "--threads", "1"])
    cfg = AutoConfig.from_pretrained(out)
    assert model_world(cfg) == "v2" and toy_prefix(model_world(cfg)) == "toy2"
    assert "v2" in layouts and set(seen) == {"v2"}
    assert model_world(AutoConfig.from_pretrained(WEIGHTS_DIR)) == "v1"
    with pytest.raises(ValueError, match="v1"):
        toy_prefix("v3")


def test_toy_v1_names_the_shipped_model():
    import routerlens_interp as rl
    from routerlens_interp.toy.evaluate import model_world

    a, b = rl.load("toy"), rl.load("toy-v1")
    assert a.name == b.name == "toy" and model_world(b.hf.config) == "v1"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(a.hf(ids).logits, b.hf(ids).logits)
