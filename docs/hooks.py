"""MkDocs hook: the figures in ``assets/*.png`` (written by the project's own code: ``make figures``, the browser
test's screenshot) are served as ``assets/<name>.png`` of the site, without a copy in ``docs/``."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def on_files(files, config):
    """Add every ``assets/*.png`` of the repository to the site's files (pages link ``assets/x.png``)."""
    for png in sorted(ASSETS.glob("*.png")):
        files.append(File(f"assets/{png.name}", src_dir=str(ASSETS.parent), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
