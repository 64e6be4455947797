"""EM/F1 against hand-worked cases (SQuAD v1.1 rules)."""
import pytest

from routerlens_interp.examples import QAExample
from routerlens_interp.evaluation.metrics import aggregate, em_f1, normalize_answer


@pytest.mark.parametrize("raw, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("An apple, a day.", "apple day"),
    ("  Paris\n\tFrance  ", "paris france"),
    ("U.S.A.", "usa"),
    ("don't", "dont"),
    ("Theatre of Anna", "theatre of anna"),  # articles only as whole words
    ("the", ""),
    ("", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_articles_and_punctuation_exact_match():
    assert em_f1("the Eiffel tower", "Eiffel Tower.") == (1.0, 1.0)
    assert em_f1("A cat", "cat") == (1.0, 1.0)


def test_several_gold_answers_take_the_max():
    assert em_f1("Paris", ["London", "paris"]) == (1.0, 1.0)
    # EM and F1 are maximised separately: F1 from the first gold, EM from none
    em, f1 = em_f1("red dog", ["red dog runs", "blue cat"])
    assert em == 0.0
    # pred [red, dog], gold [red, dog, runs]: P = 1, R = 2/3, F1 = 2*(2/3)/(5/3) = 0.8
    assert f1 == pytest.approx(0.8)


def test_string_gold_is_one_answer():
    assert em_f1("Paris", "Paris") == (1.0, 1.0)
    assert em_f1("Par", "Paris") == (0.0, 0.0)


def test_empty_prediction():
    assert em_f1("", "Paris") == (0.0, 0.0)
    assert em_f1(None, ["Paris", "Rome"]) == (0.0, 0.0)


def test_partial_overlap_f1_by_hand():
    # pred tokens after normalisation: [big, red, dog, barked] (4); gold: [red, dog] (2)
    # common = 2, P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    em, f1 = em_f1("The big red dog barked", "a red dog")
    assert em == 0.0
    assert f1 == pytest.approx(2 / 3)


def test_repeated_tokens_count_once_per_gold_occurrence():
    # pred [dog, dog, dog], gold [dog]: common 1, P = 1/3, R = 1, F1 = 0.5
    assert em_f1("dog dog dog", "dog")[1] == pytest.approx(0.5)


def test_empty_gold_list_is_an_error():
    with pytest.raises(ValueError):
        em_f1("x", [])


def test_aggregate_scales_and_memory_rate():
    data = [
        QAExample("c", "q1", ["Paris"], memory_answer="London"),
        QAExample("c", "q2", ["red dog"], memory_answer="blue cat"),
        QAExample("c", "q3", ["Rome"]),
        QAExample("c", "q4", ["Oslo"], memory_answer="Bergen"),
    ]
    preds = ["paris", "the Blue cat", "big red dog", "Bergen."]
    # EM: 1, 0, 0, 0 -> 25 ; F1: 1, 0, 0, 0 -> 25 ("big red dog" vs "Rome" shares nothing)
    # memory: 3 examples have one; q2 and q4 answered from memory -> 2/3
    out = aggregate(preds, data)
    assert out["n"] == 4
    assert out["em"] == pytest.approx(25.0)
    assert out["f1"] == pytest.approx(25.0)
    assert out["memory_rate"] == pytest.approx(200 / 3)


def test_aggregate_partial_f1_and_no_memory():
    data = [QAExample("c", "q", ["a red dog"]), QAExample("c", "q", ["cat"])]
    out = aggregate(["The big red dog barked", "cat"], data)
    assert out["em"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert out["memory_rate"] is None


def test_aggregate_length_mismatch():
    with pytest.raises(ValueError):
        aggregate(["a"], [])
    assert aggregate([], [])["n"] == 0
