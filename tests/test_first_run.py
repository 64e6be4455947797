"""The main job on a machine without a browser: HTML figures and report.json always, PNGs only where kaleido
finds a Chromium, preconditions of `--png` checked before any work (issue: `make demo` on a bare machine)."""
import json
import shutil

import pytest

from routerlens_interp.plot import export as plot_export
from routerlens_interp.model import TOY_DIR

needs_toy = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="bundled toy weights not present")


@pytest.fixture
def no_browser(monkeypatch):
    """Make kaleido's own browser lookup fail (more than PATH: it also tries the usual install paths), and fail
    any export that starts anyway, so a test cannot pass through a Chromium installed on this machine."""
    from choreographer.browsers.chromium import Chromium
    import kaleido

    monkeypatch.setattr(Chromium, "find_browser", staticmethod(lambda *a, **k: None))
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")

    def export(*a, **k):
        raise AssertionError("no export may be attempted without a browser")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", export)
    monkeypatch.setattr(plot_export, "_png_note_shown", False)


def test_png_unavailable_without_browser(no_browser):
    assert plot_export.png_unavailable() == "no Chromium found"
    with pytest.raises(plot_export.PngExportUnavailable, match="apt-get install chromium"):
        plot_export.resolve_png(True)
    with pytest.warns(UserWarning, match="PNG figures skipped"):
        assert plot_export.resolve_png("auto") is False
    assert plot_export.resolve_png(False) is False


def test_auto_writes_html_when_the_found_browser_fails(tmp_path, monkeypatch):
    import kaleido
    from routerlens_interp import plot as P
    monkeypatch.setattr(plot_export, "png_unavailable", lambda: None)  # "found" (e.g. an empty file over it)
    monkeypatch.setattr(plot_export, "_png_note_shown", False)

    def broken(*a, **k):
        raise OSError("exec format error")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", broken)
    with pytest.warns(UserWarning, match="PNG figures skipped.*exec format error"):
        paths = P.save_figures({"lens": P.logit_lens([0, 1], [0.1, 0.2])}, tmp_path)
    assert (tmp_path / "lens.html").exists() and not list(tmp_path.glob("*.png"))
    assert [p.name for p in paths] == ["lens.html", "plotly.min.js"]
    with pytest.raises(OSError):  # demanded: the failure is the user's to see
        P.save_figures({"lens": P.logit_lens([0, 1], [0.1, 0.2])}, tmp_path, png=True)


def test_png_demanded_without_browser_fails_before_any_work(tmp_path, no_browser, capsys, monkeypatch):
    from routerlens_interp.cli.commands import main
    import routerlens_interp as rl

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded when a precondition fails")

    monkeypatch.setattr(rl, "load", no_load)
    for argv in (["demo", "--fast", "--png", "--out", str(tmp_path / "d")],
                 ["run", "--png", "--out", str(tmp_path / "r")],
                 ["analyze", "--png", "--data", "toy-conflict", "--mask", str(tmp_path / "x.json"), "--out",
                  str(tmp_path / "a")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "PNG export cannot run (no Chromium found)" in err[0] and "--no-png" in err[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


@needs_toy
def test_demo_without_browser_writes_report_and_html(tmp_path, no_browser, capsys):
    """The demo's report and figure stage with the browser hidden: report.json + every figure as HTML, exit 0,
    one note saying how to get PNGs."""
    from routerlens_interp.cli.commands import main

    model = tmp_path / "model"
    shutil.copytree(TOY_DIR, model, ignore=shutil.ignore_patterns("*.md", "*.jsonl"))
    out = tmp_path / "out"
    assert main(["demo", "--fast", "--out", str(out), "--seed", "3", "--model", str(model)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"base", "router_tuned", "masked_ce", "ceft", "fft", "cag", "aag", "apg"} <= set(report)
    for name in ("masking", "expert_counts", "expert_diff", "knockout", "analysis/attention_gain", "analysis/apg"):
        assert (out / f"{name}.html").stat().st_size > 1000, name
    assert not list(out.rglob("*.png"))
    notes = [line for line in capsys.readouterr().err.splitlines() if "PNG figures skipped" in line]
    assert len(notes) == 1 and notes[0].startswith("routerlens demo: warning: ") and "apt-get install chromium" in notes[0]
