"""`routerlens demo`: a fast run in the suite; the full run with the paper's findings in `make test-slow`."""
import json
import math
import shutil

import numpy as np
import pytest

from routerlens_interp.model import TOY_DIR

pytestmark = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="bundled toy weights not present")

KEYS = {"base", "router_tuned", "masked_ce", "masked_random", "ceft", "fft", "base_recall", "cag", "aag", "apg",
        "experts", "seconds"}


def test_fast_demo_writes_report_and_figures(tmp_path):
    from routerlens_interp.cli.commands import main

    model = tmp_path / "model"  # a retrained toy model is a directory like this one
    shutil.copytree(TOY_DIR, model, ignore=shutil.ignore_patterns("*.md", "*.jsonl"))
    assert main(["demo", "--fast", "--no-png", "--out", str(tmp_path / "out"), "--seed", "1", "--model", str(model)]) == 0
    tmp_path = tmp_path / "out"
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["model"] == str(model)
    assert KEYS <= set(r)
    for k in ("base", "router_tuned", "masked_ce", "masked_random", "masked_grown", "masked_base_busiest"):
        assert {"em", "f1", "memory_rate", "open_em", "recall"} <= set(r[k])
    n = r["n_ce_per_layer"]
    for sets in (r["experts"], r["base_busiest"]):  # one list of n distinct experts per MoE layer
        assert len(sets) == len(r["cag"]) and all(len(set(v)) == len(v) == n for v in sets.values())
    assert r["masked_random"]["draws"] >= 10 and "em_ci95" in r["masked_random"]
    for k in ("ceft", "fft"):
        assert {"em", "f1", "trainable_params", "recall"} <= set(r[k])
    assert r["ceft"]["trainable_params"] < r["fft"]["trainable_params"]
    n_layers = len(r["cag"])
    assert len(r["aag"]) == len(r["apg"]) == n_layers > 0
    ko = r["knockout"]  # each layer alone, then all layers, scored in the router-tuned model
    assert ko["layer_sets"] == [[l] for l in range(n_layers)] + [list(range(n_layers))]
    assert len(ko["accuracy"]) == n_layers + 1 and all(0 <= a <= 100 for a in ko["accuracy"] + [ko["none"]])
    assert len(ko["base_open_accuracy"]) == n_layers + 1 and (tmp_path / "knockout.html").exists()
    assert (tmp_path / "masking.html").exists() and (tmp_path / "analysis" / "attention_gain.csv").exists()


@pytest.mark.slow
def test_full_demo_shows_the_papers_findings(tmp_path):
    """The thresholds of issue 6 on toy-conflict test (never loosened: a failure is a finding)."""
    from routerlens_interp.pipeline.demo import run_demo

    r = run_demo(tmp_path, seed=826, png=False)
    base, rt, ce, rnd = r["base"], r["router_tuned"], r["masked_ce"], r["masked_random"]
    assert base["em"] <= 40 and base["memory_rate"] >= 40
    assert rt["em"] >= base["em"] + 30
    drop_ce = (rt["em"] - ce["em"]) / rt["em"]
    drop_rnd = (rt["em"] - rnd["em"]) / rt["em"]
    assert drop_ce >= 0.5 and drop_rnd <= drop_ce / 2
    assert r["ceft"]["em"] >= r["fft"]["em"] - 2
    assert r["ceft"]["trainable_params"] <= 0.25 * r["fft"]["trainable_params"]
    assert r["ceft"]["recall"] >= r["fft"]["recall"]
    half = len(r["cag"]) // 2
    assert np.nanmean(r["cag"][half:]) > 0 and np.nanmean(r["aag"][half:]) > 0 and r["apg"][-1] > 0
    assert r["seconds"] <= 600 and not math.isnan(r["seconds"])
