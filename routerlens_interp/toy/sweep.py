"""Run several pretraining variants side by side on one device and rank them on dev metrics.

    python -m routerlens_interp.toy.sweep --root DIR --device cuda -- NAME:"--p-present 0.3" NAME2:"..."

Each variant runs ``python -m routerlens_interp.toy.pretrain --out DIR/NAME <common args> <its args>``
in its own process (a tiny model leaves a GPU mostly idle, so variants share it well). At the end
``DIR/ranking.json`` lists the variants best first by ``rank_key`` (dev metrics only, never test).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def rank_key(dev: dict) -> tuple:
    """Milestone first (open EM >= 80 and recall >= 90), then the conflict target, then open+recall."""
    milestone = dev["open_em"] >= 80 and dev["recall"] >= 90
    conflict = dev["conflict_em"] <= 40 and dev["memory_rate"] >= 40
    return (milestone, milestone and conflict, min(dev["open_em"], 100) + dev["recall"])


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--common", default="", help="arguments shared by all variants")
    p.add_argument("variants", nargs="+", help='NAME:"args"')
    a = p.parse_args(argv)
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    procs = {}
    for v in a.variants:
        name, _, extra = v.partition(":")
        cmd = [sys.executable, "-m", "routerlens_interp.toy.pretrain", "--out", str(root / name),
               *shlex.split(a.common), *shlex.split(extra)]
        print("launch", " ".join(cmd), flush=True)
        procs[name] = subprocess.Popen(cmd, stdout=open(root / f"{name}.out", "w"), stderr=subprocess.STDOUT)
    results = {}
    for name, pr in procs.items():
        rc = pr.wait()
        rec = root / name / "recipe.json"
        results[name] = {"rc": rc, **(json.loads(rec.read_text()) if rec.exists() else {})}
        print(name, "rc", rc, results[name].get("dev_metrics_n100"), results[name].get("test_metrics"), flush=True)
    ok = [n for n in results if "dev_metrics_n100" in results[n]]
    order = sorted(ok, key=lambda n: rank_key(results[n]["dev_metrics_n100"]), reverse=True)
    (root / "ranking.json").write_text(json.dumps(
        {"order": order, "dev": {n: {k: v for k, v in results[n]["dev_metrics_n100"].items() if k != "samples"}
                                 for n in ok}}, indent=2))
    print("ranking", order, flush=True)


if __name__ == "__main__":
    main()
