"""Expert selection against hand-computed tiny statistics."""
import json

import pytest
import torch

from routerlens_interp.analysis.counting import ExpertCounts
from routerlens_interp.analysis.selection import (ExpertSet, expert_scores, grown_experts, random_experts,
                                         select_experts)


def make_counts(counts, prob_sums=None, layers=(1, 3), n_tokens=10, top_k=2, weight_sums=None):
    c = torch.tensor(counts, dtype=torch.int64)
    p = torch.tensor(prob_sums, dtype=torch.float64) if prob_sums is not None else c.double() / top_k
    w = torch.tensor(weight_sums, dtype=torch.float64) if weight_sums is not None else c.double() * 0.5
    return ExpertCounts(counts=c, layers=list(layers), weight_sums=w, prob_sums=p, n_tokens=n_tokens, top_k=top_k)


# 2 MoE layers (decoder layers 1 and 3), 4 experts, top-2, 10 tokens: each counts row sums to 20,
# each prob_sums row to 10; the top-k weights (no renormalisation) sum to 7 per layer.
TUNED = make_counts([[5, 9, 2, 4], [3, 3, 7, 7]], [[2.0, 4.5, 1.0, 2.5], [1.0, 3.0, 2.0, 4.0]],
                    weight_sums=[[3.0, 2.0, 1.5, 0.5], [0.5, 2.5, 1.0, 3.0]])
BASE = make_counts([[9, 3, 4, 4], [7, 7, 3, 3]], [[4.0, 1.5, 2.0, 2.5], [3.5, 3.5, 1.5, 1.5]])


# --- count / ratio / gate / token -------------------------------------------------------------
def test_count_top_n_with_ties_to_lower_id():
    assert select_experts(TUNED, n=2) == {1: [0, 1], 3: [2, 3]}
    # layer 3: experts 2 and 3 tie at 7 -> the lower id wins
    assert select_experts(TUNED, n=1) == {1: [1], 3: [2]}
    assert select_experts(TUNED, n=3) == {1: [0, 1, 3], 3: [0, 2, 3]}


def test_ratio_by_hand():
    # layer 1: (5+1)/(9+1)=.6, (9+1)/(3+1)=2.5, (2+1)/(4+1)=.6, (4+1)/(4+1)=1  -> order 1, 3, 0, 2
    # layer 3: 4/8=.5, 4/8=.5, 8/4=2, 8/4=2                                   -> order 2, 3, 0, 1
    assert select_experts(TUNED, n=1, baseline=BASE, method="ratio") == {1: [1], 3: [2]}
    assert select_experts(TUNED, n=2, baseline=BASE, method="ratio") == {1: [1, 3], 3: [2, 3]}
    assert select_experts(TUNED, n=3, baseline=BASE, method="ratio") == {1: [0, 1, 3], 3: [0, 2, 3]}


def test_gate_by_hand():
    # ESFT's gate score = top-k weight sums / 10: layer 1 (.3, .2, .15, .05), layer 3 (.05, .25, .1, .3)
    assert select_experts(TUNED, n=2, method="gate") == {1: [0, 1], 3: [1, 3]}
    assert select_experts(TUNED, n=1, method="gate") == {1: [0], 3: [3]}
    assert torch.allclose(expert_scores(TUNED, "gate"),
                          torch.tensor([[.3, .2, .15, .05], [.05, .25, .1, .3]], dtype=torch.float64))


def test_softmax_mass_by_hand():
    # full-softmax mass = prob_sums / 10: layer 1 (.2, .45, .1, .25), layer 3 (.1, .3, .2, .4)
    assert select_experts(TUNED, n=2, method="softmax_mass") == {1: [1, 3], 3: [1, 3]}
    assert select_experts(TUNED, n=1, method="softmax_mass") == {1: [1], 3: [3]}


def test_token_by_hand():
    # counts / (10 * 2): layer 1 (.25, .45, .1, .2), layer 3 (.15, .15, .35, .35)
    assert select_experts(TUNED, n=2, method="token") == {1: [0, 1], 3: [2, 3]}


def test_meta_and_layers():
    s = select_experts(TUNED, n=2, method="gate")
    assert s.layers == [1, 3]
    assert s.meta == {"method": "gate", "n": 2}
    assert len(s) == 4


# --- top_p ------------------------------------------------------------------------------------
def test_top_p_gate_accumulates_raw_scores():
    # ESFT adds raw gate scores (they sum to .7 per layer here), no rescaling to 1:
    # layer 1 (.3, .2, .15, .05): .3 -> .5 -> .65 (>= .6) ; layer 3 (.05, .25, .1, .3): .3 -> .55 -> .65
    assert select_experts(TUNED, method="gate", top_p=0.6) == {1: [0, 1, 2], 3: [1, 2, 3]}
    # exactly reaching the threshold stops: layer 1 .3 + .2 = .5 ; layer 3 .3 + .25 = .55
    assert select_experts(TUNED, method="gate", top_p=0.5) == {1: [0, 1], 3: [1, 3]}
    # never reaching it (.7 < .75) keeps every expert, as ESFT's loop does
    assert select_experts(TUNED, method="gate", top_p=0.75) == {1: [0, 1, 2, 3], 3: [0, 1, 2, 3]}


def test_top_p_softmax_mass_normalised():
    # layer 1 normalised (.2, .45, .1, .25): .45 -> .70 (>= .6) ; layer 3 (.1, .3, .2, .4): .4 -> .7
    assert select_experts(TUNED, method="softmax_mass", top_p=0.6) == {1: [1, 3], 3: [1, 3]}
    # exactly reaching the threshold stops: layer 1 .45 >= .45 ; layer 3 .4 < .45 -> .7
    assert select_experts(TUNED, method="softmax_mass", top_p=0.45) == {1: [1], 3: [1, 3]}
    # .45 + .25 = .70 < .75 -> add .2 -> .9 ; layer 3 .4 + .3 = .7 < .75 -> + .2 = .9
    assert select_experts(TUNED, method="softmax_mass", top_p=0.75) == {1: [0, 1, 3], 3: [1, 2, 3]}


def test_top_p_count_and_zero_experts():
    # layer 1 counts/20: .45, .25 -> .70 ; layer 3: .35 + .35 = .70
    assert select_experts(TUNED, method="count", top_p=0.5) == {1: [0, 1], 3: [2, 3]}
    c = make_counts([[10, 10, 0, 0]], layers=[0], n_tokens=10)
    # top_p = 1 stops once the cumulative share reaches 1: unused experts are not added
    assert select_experts(c, method="count", top_p=1.0) == {0: [0, 1]}
    assert select_experts(c, method="token", top_p=0.5) == {0: [0]}


def test_top_p_ignores_n():
    assert select_experts(TUNED, n=1, method="gate", top_p=0.6) == select_experts(TUNED, n=3, method="gate", top_p=0.6)


# --- errors -----------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ValueError, match="only 4 experts"):
        select_experts(TUNED, n=5)
    with pytest.raises(ValueError, match="positive"):
        select_experts(TUNED, n=0)
    with pytest.raises(ValueError, match="baseline"):
        select_experts(TUNED, n=2, method="ratio")
    other = make_counts([[1, 1, 1, 1, 16]], layers=[1], n_tokens=10)
    with pytest.raises(ValueError, match="does not match"):
        select_experts(TUNED, n=2, method="ratio", baseline=other)
    with pytest.raises(ValueError, match="count"):
        select_experts(TUNED, n=2, method="entropy")
    with pytest.raises(ValueError, match="top_p"):
        select_experts(TUNED, method="gate", top_p=1.5)
    with pytest.raises(ValueError, match="0 tokens"):
        select_experts(make_counts([[0, 0, 0, 0]], layers=[0], n_tokens=0), n=1)


# --- ExpertSet --------------------------------------------------------------------------------
def test_construction_normalises():
    s = ExpertSet({"3": [2, 0, 2], 1: (5,), "7": []})
    assert s.layers == [1, 3]
    assert s[3] == [0, 2]
    assert len(s) == 3
    assert list(s) == [(1, [5]), (3, [0, 2])]
    assert (3, 2) in s and (3, 1) not in s and 1 in s and 7 not in s
    assert s == ExpertSet({1: [5], 3: [0, 2]})
    assert s != ExpertSet({1: [5], 3: [0]})
    with pytest.raises(ValueError):
        ExpertSet({"a": [1]})
    with pytest.raises(ValueError):
        ExpertSet({1: "12"})


def test_set_operations_and_jaccard():
    a = ExpertSet({1: [0, 1], 3: [2]})
    b = ExpertSet({1: [1, 2], 5: [0]})
    assert a | b == {1: [0, 1, 2], 3: [2], 5: [0]}
    assert a & b == {1: [1]}
    assert a - b == {1: [0], 3: [2]}
    assert b - a == {1: [2], 5: [0]}
    # pairs: a 3, b 3, shared 1 -> union 5
    assert a.jaccard(b) == pytest.approx(1 / 5)
    assert b.jaccard(a) == pytest.approx(1 / 5)
    assert a.jaccard(a) == 1.0
    assert a.jaccard_per_layer(b) == pytest.approx({1: 1 / 3, 3: 0.0, 5: 0.0})
    assert ExpertSet({}).jaccard(ExpertSet({})) == 1.0


def test_json_round_trip(tmp_path):
    s = select_experts(TUNED, n=2, baseline=BASE, method="ratio")
    text = s.to_json()
    d = json.loads(text)
    assert d["experts"] == {"1": [1, 3], "3": [2, 3]}
    back = ExpertSet.from_json(text)
    assert back == s and back.meta == s.meta
    path = tmp_path / "experts.json"
    s.save(path)
    loaded = ExpertSet.load(path)
    assert loaded == s and loaded.meta == {"method": "ratio", "n": 2}
    # a plain {layer: [ids]} file also loads
    (tmp_path / "plain.json").write_text(json.dumps({"3": [4, 1], "0": [2]}))
    assert ExpertSet.load(tmp_path / "plain.json") == {0: [2], 3: [1, 4]}
    with pytest.raises(FileNotFoundError):
        ExpertSet.load(tmp_path / "missing.json")


# --- controls ---------------------------------------------------------------------------------
def test_random_experts_deterministic_and_excluding():
    ces = ExpertSet({0: [0, 1, 2, 3], 2: [15, 14]})
    a = random_experts(4, layers=[0, 2, 5], n_experts=16, exclude=ces, seed=3)
    b = random_experts(4, layers=[0, 2, 5], n_experts=16, exclude=ces, seed=3)
    assert a == b
    assert a.layers == [0, 2, 5]
    assert all(len(ids) == 4 and all(0 <= e < 16 for e in ids) for _, ids in a)
    assert not (a & ces)
    draws = [random_experts(4, layers=[0, 2, 5], n_experts=16, exclude=ces, seed=s) for s in range(10)]
    assert len({d.to_json() for d in draws}) > 1
    # exclusion over many draws: never an excluded expert
    for d in draws:
        assert not set(d[0]) & {0, 1, 2, 3} and not set(d[2]) & {14, 15}
    # only 2 experts left in layer 0 of 6
    with pytest.raises(ValueError, match="cannot draw"):
        random_experts(3, layers=[0], n_experts=6, exclude=ces, seed=0)
    with pytest.raises(ValueError):
        random_experts(7, layers=[0], n_experts=6)


def test_random_experts_uses_all_allowed_when_n_equals_pool():
    s = random_experts(2, layers=[0], n_experts=6, exclude={0: [0, 1, 2, 3]}, seed=1)
    assert s == {0: [4, 5]}


def test_grown_experts_by_hand():
    # tuned - base: layer 1 (-4, 6, -2, 0) -> 1, 3 ; layer 3 (-4, -4, 4, 4) -> 2, 3
    assert grown_experts(TUNED, BASE, n=2) == {1: [1, 3], 3: [2, 3]}
    assert grown_experts(TUNED, BASE, n=1) == {1: [1], 3: [2]}
    with pytest.raises(ValueError):
        grown_experts(TUNED, make_counts([[1, 2, 3, 4]], layers=[1]), n=1)


# --- ESFT's scores from a tiny model's logged top-k weights -----------------------------------
def _esft_scores(lines_per_layer: dict, top_k: int, n_experts: int) -> dict:
    """ESFT's get_expert_scores.py, re-written: per logged token line (expert ids, weights) add each
    weight to the expert's gate score and 1/top_k to its token score; divide both by the token total."""
    gate, token = {}, {}
    for layer, lines in lines_per_layer.items():
        g, t = [0.0] * n_experts, [0.0] * n_experts
        for ids, ws in lines:
            for e, w in zip(ids, ws):
                g[e] += w
                t[e] += 1.0 / top_k
        total = sum(t)
        gate[layer], token[layer] = [x / total for x in g], [x / total for x in t]
    return {"gate": gate, "token": token}


def _esft_top_p(scores: list[float], top_p: float) -> list[int]:
    """ESFT's generate_expert_config.py loop: add raw scores, best first, until they reach top_p."""
    chosen, cur = [], 0.0
    for e, s in sorted(enumerate(scores), key=lambda x: x[1], reverse=True):
        if cur >= top_p:
            break
        chosen.append(e)
        cur += s
    return sorted(chosen)


def test_gate_and_token_scores_equal_esft_on_logged_topk_weights(load_tiny):
    import routerlens_interp as rl

    lm = load_tiny("olmoe")  # no top-k renormalisation: the logged weights sum to < 1 per token
    texts = ["Alice Smith was born in 1950 in Paris.", "Where was Bob Jones born? He lives in Rome and paints.",
             "Context: a baker", "Question: When was Bob Jones born? Answer: 1972"]
    lines = {l: [] for l in lm.spec.moe_layers}
    handles = []
    for l in lm.spec.moe_layers:  # the router's own outputs (logits, top-k weights, top-k ids), one token a line
        def hook(mod, args, out, l=l):
            lines[l] += [(i.tolist(), w.tolist()) for i, w in zip(out[2], out[1].double())]
        handles.append(lm.hf.model.layers[l].mlp.gate.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for t in texts:  # one at a time: no padding tokens logged
                lm.hf(torch.tensor([lm.tokenizer(t)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    ref = _esft_scores(lines, lm.spec.top_k, lm.spec.n_experts)
    counts = rl.count_experts(lm, texts, batch_size=3)  # padded batches
    for method in ("gate", "token"):
        want = torch.tensor([ref[method][l] for l in lm.spec.moe_layers], dtype=torch.float64)
        assert torch.allclose(expert_scores(counts, method), want, atol=1e-6), method
    gate_total = sum(ref["gate"][lm.spec.moe_layers[0]])
    assert gate_total < 0.95  # raw gate scores do not sum to 1: accumulating them differs from rescaling
    for p in (0.3, 0.6, 0.9):
        s = select_experts(counts, method="gate", top_p=p)
        assert s == {l: _esft_top_p(ref["gate"][l], p) for l in lm.spec.moe_layers}, p
    assert select_experts(counts, method="softmax_mass", n=2).meta["method"] == "softmax_mass"
