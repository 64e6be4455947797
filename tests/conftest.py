"""Shared fixtures: tiny models of every supported MoE family, saved once per session and reloaded.

``tests/`` is put on ``sys.path`` so tests can ``import tiny``.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402

FAMILIES = list(tiny.configs())

# Tiny models gain nothing from intra-op threads, and lose a lot when the two cores are shared.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, str]:
    """Family → directory holding a tiny model + tokenizer written with ``save_pretrained`` (lazily)."""
    root = tmp_path_factory.mktemp("tiny_models")

    class _Paths(dict):
        def __missing__(self, family):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = tiny.save(family, root / family)
            self[family] = path
            return path

    return _Paths()


@pytest.fixture(scope="session")
def load_tiny(tiny_paths):
    """``load_tiny(family, fresh=False)`` → MoEModel reloaded with ``rl.load``; cached unless ``fresh``."""
    import routerlens_interp as rl

    cache: dict[str, object] = {}

    def _load(family: str, fresh: bool = False):
        if fresh or family not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = rl.load(tiny_paths[family])
            if fresh:
                return lm
            cache[family] = lm
        return cache[family]

    return _load


@pytest.fixture(scope="session", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def lm(family, load_tiny):
    """A loaded tiny :class:`MoEModel` of each family (shared: tests must not change its weights)."""
    return load_tiny(family)


def pytest_collection_modifyitems(config, items):
    """Notebook 03 runs, every cell, inside the real-browser test (which also fails on any error output).
    Where that test can run in this session, nbmake does not run the notebook a second time (~80 s of CI);
    where it cannot (no Chromium), nbmake still runs it."""
    by_name = {Path(str(item.fspath)).name: item for item in items}
    nb = by_name.get("03_live_ablation.ipynb")
    if nb is None or "test_browser.py" not in by_name:
        return
    import test_browser

    if test_browser._missing() is None:
        items.remove(nb)
        config.hook.pytest_deselected(items=[nb])

# tests/remote_code/ holds modeling files of test models (loaded with trust_remote_code), not tests; their names
# end in _test.py, which pytest would collect
collect_ignore_glob = ["remote_code/*"]
