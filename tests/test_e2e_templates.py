"""The whole method through the CLI on a tiny random MoE under three chat-template shapes, on NQ-Swap-shaped
text: tune-router → count → select → masked evaluate → analyze → knockout (issue 20, "Done when")."""
from __future__ import annotations

import json

import pytest

import chat_templates as ct
from routerlens_interp.cli.commands import main


def run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("template", list(ct.TEMPLATES))
def test_pipeline_under_chat_template(template, tmp_path, capsys):
    model = ct.save_model(template, tmp_path / "model")
    data = ct.write_records(tmp_path / "nq_swap.json")
    common = ["--model", model, "--data", data, "--json"]
    rt = run(capsys, "tune-router", *common, "--out", tmp_path / "rt", "--max-steps", 2, "--batch-size", 2)
    assert rt["out"] == str(tmp_path / "rt") and (tmp_path / "rt" / "adapter.json").exists()
    counts = run(capsys, "count", *common, "--adapter", tmp_path / "rt", "--out", tmp_path / "c.safetensors")
    # independent: every record rendered by the template with its answer, tokenised, less the end token
    tok = ct.tokenizer(template)
    n = 0
    for r in ct.NQ_SWAP:
        text = tok.apply_chat_template([{"role": "user", "content": ct.PROMPT.format(**r)},
                                        {"role": "assistant", "content": r["answer"]}], tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[-1] == tok.eos_token_id
        n += len(ids) - 1
    assert counts["n_tokens"] == n and len(counts["layers"]) == 2
    sel = run(capsys, "select", "--counts", tmp_path / "c.safetensors", "--n", 2, "--out", tmp_path / "e.json",
               "--json")
    assert all(len(v) == 2 for v in (sel["experts"].get("experts", sel["experts"])).values())
    ev = run(capsys, "evaluate", *common, "--adapter", tmp_path / "rt", "--mask", tmp_path / "e.json",
             "--max-new-tokens", 6, "--predictions", tmp_path / "p.jsonl")
    assert ev["n"] == len(ct.NQ_SWAP) and ev["memory_rate"] is not None
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == len(ct.NQ_SWAP) and all(p["prediction"] == p["prediction"].strip() for p in preds)
    ana = run(capsys, "analyze", *common, "--adapter", tmp_path / "rt", "--out", tmp_path / "ana", "--no-png")
    assert len(ana["cag"]) == 2 and (tmp_path / "ana" / "apg.csv").exists()
    ko = run(capsys, "knockout", *common, "--adapter", tmp_path / "rt", "--layers", "0;0,1")
    assert [r["layers"] for r in ko["rows"]] == ["0", "0,1"] and ko["n"] + ko["n_skipped"] == len(ct.NQ_SWAP)
