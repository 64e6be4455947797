"""BLEU / ROUGE-L / METEOR against the values the libraries themselves publish."""
import pytest

import routerlens_interp as rl
from routerlens_interp.errors import UserError
from routerlens_interp.evaluation.text_metrics import METEOR_STAGES_FULL, METEOR_STAGES_NO_WORDNET, wordnet_available


def test_bleu_is_sacrebleus_readme_example():
    # sacrebleu README ("Using SacreBLEU from Python"): BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    sys_out = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    per_example = [[refs[0][i], refs[1][i]] for i in range(3)]  # our layout: references per prediction
    assert round(rl.bleu(sys_out, per_example), 2) == 48.53


def test_bleu_pads_missing_references_without_changing_the_score():
    one = rl.bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert rl.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(one)


def test_rouge_l_is_rouge_scores_test_values():
    # rouge_score/rouge_scorer_test.py testRougeLConsecutive / NonConsecutive: P 1, R 2/3, F 4/5
    assert rl.rouge_l(["testing one"], ["testing one two"]) == pytest.approx(80.0)
    assert rl.rouge_l(["testing two"], ["testing one two"], use_stemmer=False) == pytest.approx(80.0)
    # best of several references, mean over examples
    assert rl.rouge_l(["testing one", "testing two"], [["zzz", "testing one two"], "testing two"]) \
        == pytest.approx((80.0 + 100.0) / 2)


def test_meteor_is_nltks_test_value():
    # nltk/test/unit/translate/test_meteor.py: meteor(reference, candidate, preprocess=str.lower) == 0.9921875
    # (every word matches exactly, so no WordNet lookup is needed)
    score, stages = rl.meteor(["THIS Is a tEST"], [["this is a test", "this istest"]])
    assert score == pytest.approx(99.21875)
    assert stages == (METEOR_STAGES_FULL if wordnet_available() else METEOR_STAGES_NO_WORDNET)


def test_meteor_says_which_stages_ran():
    score, stages = rl.meteor(["the cats sat"], ["the cat sat"], synonyms=False)
    assert stages == "exact+stem" and score > 0
    if not wordnet_available():
        with pytest.raises(UserError, match="nltk.downloader wordnet"):
            rl.meteor(["a"], ["a"], synonyms=True)


@pytest.mark.skipif(not wordnet_available(), reason="NLTK's WordNet data is not installed")
def test_meteor_docstring_example_with_wordnet():
    # nltk.translate.meteor_score.single_meteor_score docstring: 0.6944
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party"
    ref = "It is a guide to action that ensures that the military will forever heed Party commands"
    score, stages = rl.meteor([hyp], [ref])
    assert round(score / 100, 4) == 0.6944 and stages == "exact+stem+synonym"


def test_text_scores_and_bad_input():
    s = rl.text_scores(["nec in computer sales tie-up"], ["nec UNK in computer sales tie-up"])
    assert set(s) == {"bleu", "rouge_l", "meteor", "meteor_stages", "n"} and s["n"] == 1
    assert 0 < s["bleu"] < 100 and 0 < s["rouge_l"] < 100 and 0 < s["meteor"] < 100
    with pytest.raises(UserError, match="2 predictions for 1"):
        rl.bleu(["a", "b"], ["a"])
    with pytest.raises(UserError, match="reference 0 is empty"):
        rl.rouge_l(["a"], [[]])
