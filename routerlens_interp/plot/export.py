"""Helpers behind :mod:`routerlens_interp.plot`: token text rendering, Jaccard overlap, batched export.

Use them through ``routerlens_interp.plot`` (which re-exports everything public here).
"""
from __future__ import annotations

import os
import re
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from ..errors import UserError

FONT_FAMILY = "Arial, 'Liberation Sans', Helvetica, sans-serif"
_DIV_SCALE = "RdBu_r"
_CHROMIUM_MSG = "install Chromium (apt-get install chromium) or pass png=False (--no-png on the command line)"


class PngExportUnavailable(UserError, RuntimeError):
    """PNG export cannot run here (no kaleido or no Chromium); the CLI shows it as one line."""


# ------------------------------------------------------------------------------------- Jaccard
def _pairs(m: Mapping) -> set[tuple[int, int]]:
    return {(int(layer), int(e)) for layer, ids in m.items() for e in ids}


def jaccard_matrix(sets: Mapping[str, Mapping]) -> np.ndarray:
    """``[n, n]`` Jaccard overlap |A∩B| / |A∪B| over (layer, expert) pairs (1.0 for two empty sets)."""
    pairs = [_pairs(m) for m in sets.values()]
    n = len(pairs)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            union = len(pairs[i] | pairs[j])
            out[i, j] = len(pairs[i] & pairs[j]) / union if union else 1.0
    return out


# -------------------------------------------------------------------------------------- tokens
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def clean_token(tok: str) -> str:
    """Readable text of a tokenizer token: byte-level BPE (Ġ space, Ċ newline, ĉ tab, Ã© -> é),
    SentencePiece (▁ space, <0x0A> newline) or already-decoded text."""
    if tok is None:
        return ""
    m = _SP_BYTE.match(tok)
    if m:
        return bytes([int(m.group(1), 16)]).decode("latin-1")
    dec = _byte_decoder()
    if tok and all(ch in dec for ch in tok) and any(ord(ch) >= 0x80 for ch in tok):
        try:  # a byte-level BPE token whose bytes form valid UTF-8
            return bytes(dec[ch] for ch in tok).decode("utf-8")
        except UnicodeDecodeError:
            pass
    return tok.replace("Ġ", " ").replace("Ċ", "\n").replace("ĉ", "\t").replace("▁", " ")


# Arial / Liberation Sans advance widths (1/1000 em) for printable ASCII; other chars estimated.
_W = dict(zip(" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~",
              [278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278] + [556] * 10 +
              [278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556,
               833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
               333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333,
               500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584]))


def text_width(s: str, size: float) -> float:
    """Estimated rendered width in px of ``s`` in Arial at font ``size``."""
    total = 0
    for ch in s:
        if ch in _W:
            total += _W[ch]
        elif unicodedata.east_asian_width(ch) in "WF":
            total += 1000
        else:
            total += 620
    return total * size / 1000.0


def _esc(s: str) -> str:
    """Plotly text is HTML-like: show ``<``, ``>`` and ``&`` literally."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text_color(rgb: str) -> str:
    r, g, b = (int(v) for v in re.findall(r"[\d.]+", rgb)[:3])
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def token_attention_diff(tokens: Sequence[str], diff: Any, title: str | None = None,
                         highlight: Sequence[tuple[int, int]] | None = None, vmax: float | None = None,
                         width: int = 1000, font_size: int = 15) -> go.Figure:
    """Per-token attention difference (tuned − base) drawn as coloured text.

    Each token is a box coloured on a diverging scale centred at 0 (red = more attention after
    tuning, blue = less), laid out like running text and wrapped; newline tokens break the line.
    ``highlight``: half-open token index ranges ``[start, end)`` (e.g. the answer span), framed
    (one frame per run of consecutive tokens on a line). Hover shows token index, text and value. ``vmax`` fixes the colour range to ±vmax.
    """
    d = np.asarray(diff.detach().cpu().numpy() if hasattr(diff, "detach") else diff, dtype=float).reshape(-1)
    if len(tokens) != len(d):
        raise ValueError(f"{len(tokens)} tokens but {len(d)} values")
    finite = d[np.isfinite(d)]
    vm = float(vmax) if vmax else (float(np.abs(finite).max()) if finite.size else 0.0) or 1.0
    marked = set()
    for a, b in highlight or []:
        marked.update(range(max(0, int(a)), min(len(d), int(b))))
    pad, line_h, box_h, left = 4.0, font_size * 2.0, font_size * 1.45, 10.0
    right = width - 150.0  # room for the colour bar
    boxes = []  # (index, label, x0, line)
    x, line = left, 0

    def place(i: int, label: str, gap: float) -> None:
        nonlocal x, line
        w = text_width(label, font_size) + 2 * pad
        if x > left and x + gap + w > right:
            x, line = left, line + 1
        elif x > left:
            x += gap
        boxes.append((i, label, x, w, line))
        x += w

    for i, tok in enumerate(tokens):
        s = clean_token(tok).replace("\t", "    ").replace("\r", "")
        gap = font_size * 0.45 if s[:1].isspace() else 2.0  # word boundary vs subword continuation
        parts = s.split("\n")
        if not any(p.strip() for p in parts):
            place(i, "↵" if len(parts) > 1 else "␣", gap)
        for j, part in enumerate(parts):
            if j > 0:
                x, line = left, line + (1 if j < 3 else 0)
            if part.strip():
                place(i, part.strip(), gap if j == 0 else 0.0)
    n_lines = (boxes[-1][4] + 1) if boxes else 1
    colors = sample_colorscale(_DIV_SCALE, list(np.clip(0.5 + 0.5 * np.nan_to_num(d) / vm, 0, 1)))
    fig = go.Figure()
    shapes, annotations = [], []
    for i, label, x0, w, ln in boxes:
        y0 = ln * line_h + (line_h - box_h) / 2
        color = colors[i] if np.isfinite(d[i]) else "rgb(230,230,230)"
        shapes.append(dict(type="rect", x0=x0, x1=x0 + w, y0=y0, y1=y0 + box_h, fillcolor=color, line=dict(width=0),
                           layer="below", name=f"tok{i}"))
        annotations.append(dict(x=x0 + w / 2, y=y0 + box_h / 2, text=_esc(label), showarrow=False,
                                font=dict(size=font_size, color=_text_color(color), family=FONT_FAMILY),
                                xanchor="center", yanchor="middle"))
    # highlight: one frame around each run of marked tokens that sits on one line
    runs: list[list] = []
    for i, _, x0, w, ln in boxes:
        if i not in marked:
            continue
        if runs and runs[-1][4] == ln and runs[-1][1] in (i, i - 1):
            runs[-1][1], runs[-1][3] = i, x0 + w
        else:
            runs.append([i, i, x0, x0 + w, ln])
    for a, b, x0, x1, ln in runs:
        y0 = ln * line_h + (line_h - box_h) / 2
        shapes.append(dict(type="rect", x0=x0 - 2, x1=x1 + 2, y0=y0 - 2, y1=y0 + box_h + 2, fillcolor="rgba(0,0,0,0)",
                           line=dict(color="#111", width=2.5), layer="above", name=f"highlight{a}-{b}"))
    # invisible markers carry the hover text and the colour bar
    fig.add_trace(go.Scatter(
        x=[b[2] + b[3] / 2 for b in boxes], y=[b[4] * line_h + line_h / 2 for b in boxes], mode="markers",
        marker=dict(size=font_size * 1.4, symbol="square", opacity=0, color=[d[b[0]] for b in boxes],
                    colorscale=_DIV_SCALE, cmin=-vm, cmax=vm, showscale=True,
                    # inside the strip kept free right of the text: plotly never has to push the margins
                    # (which shrank the 1 unit = 1 px scale) and the end ticks stay inside the figure
                    colorbar=dict(title=dict(text="Δ attention", side="right"), thickness=14, len=1.0, nticks=5,
                                  x=(right + 25) / (width - 20), xanchor="left", y=0.5, yanchor="middle",
                                  ypad=8, xpad=0)),
        customdata=[[b[0], _esc(clean_token(tokens[b[0]]).replace("\n", "↵")), d[b[0]]] for b in boxes],
        hovertemplate="token %{customdata[0]}: %{customdata[1]}<br>Δ attention %{customdata[2]:.4g}<extra></extra>",
        showlegend=False))
    top, bottom = (60 if title else 24), 24
    height = max(int(n_lines * line_h + 8 + top + bottom), 200)
    fig.update_layout(template="plotly_white", width=width, height=height, shapes=shapes,
                      annotations=annotations, font=dict(family=FONT_FAMILY, size=font_size),
                      title=dict(text=title, x=0.5, xanchor="center") if title else None,
                      margin=dict(l=10, r=10, t=top, b=bottom, autoexpand=False), plot_bgcolor="white",
                      hoverlabel=dict(font_family=FONT_FAMILY))
    # 1 axis unit = 1 px both ways (the text boxes were measured in px); extra height stays blank below
    fig.update_xaxes(visible=False, range=[0, width - 20], fixedrange=True)
    fig.update_yaxes(visible=False, range=[height - top - bottom - 4, -4], fixedrange=True)
    return fig


# -------------------------------------------------------------------------------------- export
def _safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s or "figure"


def png_unavailable() -> str | None:
    """Why PNG export cannot run here (no kaleido, no Chromium where kaleido looks), or ``None`` when it can.

    Cheap (no browser is started): kaleido's own lookup (``BROWSER_PATH``, ``PATH``, the usual install paths).
    A browser that is found but does not start is only discovered by an export (``png="auto"`` then skips).
    """
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium
    except ImportError as e:  # pragma: no cover - kaleido is a dependency
        return f"kaleido is not importable ({e})"
    try:
        path = Chromium.find_browser(skip_local=False)
    except Exception as e:  # any failure of the lookup means: no usable browser
        return f"looking for Chromium failed ({type(e).__name__}: {e})"
    if not path or not Path(path).is_file() or not os.access(path, os.X_OK) or Path(path).stat().st_size == 0:
        return "no Chromium found"
    return None


_png_note_shown = False


def _skip_png_note(reason: str) -> None:
    """Say once per process that PNGs were skipped and how to get them (HTML figures are always written)."""
    global _png_note_shown
    if not _png_note_shown:
        _png_note_shown = True
        warnings.warn(f"PNG figures skipped ({reason}); the HTML figures are written. For PNGs too: "
                      "apt-get install chromium (kaleido finds it), then re-run", stacklevel=3)


def resolve_png(png: bool | str) -> bool:
    """``png`` ∈ {True, False, "auto"} → whether to write PNGs now.

    ``True`` demands PNGs (:class:`PngExportUnavailable` when the exporter cannot run: call this before long work
    so it fails first); ``"auto"`` writes them when a browser is found and otherwise says so once.
    """
    if png is False or png is None:
        return False
    if png not in (True, "auto"):
        raise ValueError(f"png must be True, False or 'auto'; got {png!r}")
    why = png_unavailable()
    if why is None:
        return True
    if png is True:
        raise PngExportUnavailable(f"PNG export cannot run ({why}): {_CHROMIUM_MSG}")
    _skip_png_note(why)
    return False


def save_figures(figs: Mapping[str, go.Figure], out_dir: str | Path, png: bool | str = "auto", html: bool = True,
                 scale: float = 2) -> list[Path]:
    """Write each figure as ``<name>.html`` and ``<name>.png`` into ``out_dir``; returns the paths.

    HTML files share one ``plotly.min.js`` in ``out_dir`` (they open offline; it is in the returned list). PNGs are rendered in
    one kaleido/Chromium session for all figures (starting the browser costs seconds). ``png="auto"`` (default) writes
    them when kaleido finds a browser and otherwise skips them with one note (an export that fails to start the
    browser is skipped the same way); ``png=True`` raises :class:`PngExportUnavailable` instead; ``png=False`` skips.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    for name in figs:
        base = _safe_name(name)
        if base in names.values():
            raise ValueError(f"figure names {name!r} and another map to the same file name {base!r}")
        names[name] = base
    written: list[Path] = []
    if html:
        for name, fig in figs.items():
            path = out / f"{names[name]}.html"
            fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
            written.append(path)
        written.append(out / "plotly.min.js")  # shared by the HTML files, written by plotly once
    if figs and resolve_png(png):
        try:
            written += _write_pngs({out / f"{names[n]}.png": f for n, f in figs.items()}, scale)
        except Exception as e:  # auto: a browser that was found but does not start must not lose the run's work
            if png is True:
                raise
            _skip_png_note(f"the export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return written


def _write_pngs(specs: Mapping[Path, go.Figure], scale: float) -> list[Path]:
    try:
        import kaleido
        from choreographer.errors import ChromeNotFoundError
    except ImportError as e:  # pragma: no cover - kaleido is a dependency
        raise PngExportUnavailable(f"PNG export needs kaleido>=1 ({e}); pip install kaleido, or pass png=False "
                                   "(--no-png)") from e
    jobs = []
    for path, fig in specs.items():
        opts = {"format": "png", "scale": scale, "width": fig.layout.width or 900, "height": fig.layout.height or 500}
        jobs.append({"fig": fig.to_dict(), "path": path, "opts": opts})
    try:  # one browser for all figures; mathjax off: it would be fetched from a CDN
        errors = kaleido.write_fig_from_object_sync(jobs, kopts={"mathjax": False}, cancel_on_error=False)
    except ChromeNotFoundError as e:
        raise PngExportUnavailable(f"PNG export found no Chromium: {_CHROMIUM_MSG}") from e
    except Exception as e:
        if "chrome" in str(e).lower() and ("not found" in str(e).lower() or "install" in str(e).lower()):
            raise PngExportUnavailable(f"PNG export found no Chromium: {_CHROMIUM_MSG}") from e
        raise
    if errors:
        raise RuntimeError(f"PNG export failed for {len(errors)} figure(s): {errors[0]!r}")
    missing = [p for p in specs if not p.exists()]
    if missing:
        raise RuntimeError(f"PNG export wrote no file for {missing}")
    return list(specs)
