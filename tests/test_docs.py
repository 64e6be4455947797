"""The docs site and the README: every public name documented, every page present, generated parts up to date.

`make docs` builds the site with ``mkdocs build --strict`` (broken links, missing pages, unrenderable docstrings);
these tests check what the build does not: that nothing public is left out of the API reference or lacks a
docstring, that the generated tables match their sources, and that the README stays a short front door.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

import routerlens_interp as rl

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def resolve(path: str):
    """``a.b.c.name`` → the object: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def directives() -> dict[str, object]:
    """Every ``::: path`` of the API pages → the object it documents."""
    out = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            out[path] = resolve(path)
    return out


def public_object(name: str):
    """What ``rl.<name>`` is, read from its defining module (``rl.trace`` is a callable module; use the function)."""
    if name in ("plot", "widgets"):
        return importlib.import_module(rl._EXPORTS[name], "routerlens_interp")
    mod = importlib.import_module(rl._EXPORTS[name], "routerlens_interp")
    return getattr(mod, name)


def has_docstring(obj) -> bool:
    """An own, non-empty docstring (a dataclass's generated ``Name(a, b)`` signature does not count)."""
    doc = inspect.getdoc(obj) if inspect.ismodule(obj) else obj.__doc__
    if not doc or not doc.strip():
        return False
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return False
    return True


def module_public(mod) -> list[str]:
    """A module's public functions and classes: its ``__all__``, else what it defines without a leading ``_``."""
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_")
                 and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == mod.__name__]
    return [n for n in names if inspect.isfunction(getattr(mod, n)) or inspect.isclass(getattr(mod, n))]


def test_every_public_name_has_a_docstring():
    missing = [n for n in rl.__all__ if not has_docstring(public_object(n))]
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_name_is_on_an_api_page():
    documented = directives()
    ids = {id(o) for o in documented.values()}
    missing = [n for n in rl.__all__ if id(public_object(n)) not in ids]
    assert not missing, (f"public names missing from docs/api/*.md: {missing}; add a '::: module.name' line "
                         f"(e.g. '::: {public_object(missing[0]).__module__}.{missing[0]}')" if missing else "")


def test_the_documented_modules_public_functions_have_docstrings():
    mods = {}
    for obj in directives().values():
        mod = obj if inspect.ismodule(obj) else importlib.import_module(obj.__module__)
        mods[mod.__name__] = mod
    missing = [f"{m}.{n}" for m, mod in sorted(mods.items()) for n in module_public(mod)
               if not has_docstring(getattr(mod, n))]
    assert not missing, f"public functions / classes without a docstring: {missing}"


def test_the_checks_catch_an_undocumented_function(tmp_path, monkeypatch):
    """The docstring and API-page checks fail for a public function without a docstring or a page."""
    pkg = tmp_path / "docprobe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def documented():\n    '''Has one.'''\n\n\ndef bare():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("docprobe")
    assert module_public(mod) == ["documented", "bare"]
    assert [has_docstring(getattr(mod, n)) for n in module_public(mod)] == [True, False]

    @dataclasses.dataclass
    class Plain:
        x: int

    assert not has_docstring(Plain)
    assert id(mod.bare) not in {id(o) for o in directives().values()}


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for v in item.values():
                out += _nav_pages(v) if isinstance(v, list) else [v]
    return out


def _mkdocs_config() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    cfg = _mkdocs_config()
    pages = _nav_pages(cfg["nav"])
    assert len(pages) == len(set(pages)), "a page is listed twice in mkdocs.yml's nav"
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav lists pages that do not exist: {missing}"
    orphans = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in pages)
    assert not orphans, f"pages not in mkdocs.yml's nav: {orphans}"


def test_the_site_needs_no_network():
    """No web fonts, no remote script (the site is built and read offline)."""
    cfg = _mkdocs_config()
    assert cfg["theme"].get("font") is False
    remote = [s for s in cfg.get("extra_javascript", []) + cfg.get("extra_css", []) if "://" in str(s)]
    assert not remote


def test_every_figure_a_page_shows_is_a_project_asset():
    """Pages show ``assets/x.png`` (served from the repository's assets/ by docs/hooks.py); each must exist."""
    shown = set()
    for page in DOCS.rglob("*.md"):
        shown |= set(re.findall(r"\]\((?:\.\./)*assets/([\w.-]+\.png)\)", page.read_text(encoding="utf-8")))
    assert shown, "no figure found: the pattern is stale"
    assert not [f for f in shown if not (ROOT / "assets" / f).is_file()]


# --------------------------------------------------------------------------------------------------- README
def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\bissues? #?\d+", text, re.I), "the README refers to an issue number"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [l for l in links if "://" not in l]
    assert any(l.startswith("docs/") for l in local)
    broken = [l for l in local if not (ROOT / l).exists()]
    assert not broken, f"README links to files that do not exist: {broken}"
    for command in ("make demo", "make test", "routerlens run", "--recipe paper", "routerlens inspect",
                    "routerlens demo --seed 826", "assets/board.png"):
        assert command in text, command


def test_readme_headline_table_is_the_demo_report():
    """The README's result table equals the one rendered from assets/demo_report.json (docs/hooks.py), so the
    README cannot drift from the measured numbers (``python docs/hooks.py --readme`` rewrites it)."""
    hooks = _module(DOCS / "hooks.py", "routerlens_docs_hooks")
    table = hooks.demo_table(json.loads((ROOT / "assets" / "demo_report.json").read_text(encoding="utf-8")))
    text = README.read_text(encoding="utf-8")
    between = text[text.index(hooks.README_START) + len(hooks.README_START):text.index(hooks.README_END)]
    assert between.strip() == table, ("README's headline table differs from assets/demo_report.json; run "
                                      "`python docs/hooks.py --readme`")


def test_write_readme_rewrites_only_the_table(tmp_path):
    hooks = _module(DOCS / "hooks.py", "routerlens_docs_hooks")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{hooks.README_START}\n| stale |\n{hooks.README_END}\nrest\n", encoding="utf-8")
    hooks.write_readme(readme)
    text = readme.read_text(encoding="utf-8")
    assert "| stale |" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    report = json.loads((ROOT / "assets" / "demo_report.json").read_text(encoding="utf-8"))
    assert f"| router-tuned, 8 CEs/layer masked | {report['masked_ce']['em']:.1f} |" in text


def test_demo_table_reads_the_report():
    """The renderer is not a constant: a changed report changes the table."""
    hooks = _module(DOCS / "hooks.py", "routerlens_docs_hooks")
    report = json.loads((ROOT / "assets" / "demo_report.json").read_text(encoding="utf-8"))
    report["masked_ce"] = dict(report["masked_ce"], em=12.34)
    row = next(l for l in hooks.demo_table(report).splitlines() if "CEs/layer masked" in l)
    assert row.split("|")[2].strip() == "12.3"


def test_architectures_table_is_generated_from_the_family_results():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import family_report
    finally:
        sys.path.remove(str(ROOT / "tests"))
    report = json.loads((ROOT / "assets" / "families.json").read_text(encoding="utf-8"))

    def block(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text[text.index(family_report.START) + len(family_report.START):text.index(family_report.END)].strip()

    assert block(DOCS / "architectures.md") == family_report.render(report).strip()
    assert block(README) == family_report.summary(report).strip()
    c = family_report.counts(report)
    native = [f for f in report["results"] if f not in family_report.remote_rows(report)]
    assert c["families"] == len(native) and c["loaded"] + c["refused"] == c["families"]


def test_sphinx_roles_in_docstrings_render_as_code():
    hooks = _module(DOCS / "hooks.py", "routerlens_docs_hooks")
    html = "Raises :class:<code>~routerlens_interp.arch.NotMoEError</code>; see :func:<code>a.b.f</code>."
    assert hooks.strip_roles(html) == "Raises <code>NotMoEError</code>; see <code>a.b.f</code>."
