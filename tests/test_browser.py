"""Notebook 03 in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by selenium.

Runs every cell, then uses the expert board as a researcher would (click a cell, pick presets) and
reads what the page shows. Skipped, with the reason, only where Chromium, chromedriver, selenium or
JupyterLab is missing. Screenshots go to the test's tmp_path; with ``ROUTERLENS_SCREENSHOTS=DIR`` the
board is also written to ``DIR/board.png`` (the README's screenshot: ``ROUTERLENS_SCREENSHOTS=assets``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "03_live_ablation.ipynb"
# Without the background-networking flags Chromium keeps calling home, which a closed network floods.
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1800"]


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} not found on PATH (Debian: apt-get install chromium chromium-driver)"
    for mod in ("selenium", "jupyterlab", "anywidget"):
        try:
            __import__(mod)
        except ImportError:
            return f"python package {mod} not installed (pip install -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None) -> None:
    """End ``proc`` and its process group (the kernel JupyterLab started), also when it hangs."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


class Lab:
    """A JupyterLab server in its own process group, with every directory under ``root``."""

    def __init__(self, root: Path):
        self.root, self.port, self.token = root, _free_port(), os.urandom(12).hex()
        for d in ("nb", "config", "data", "runtime", "ipython", "settings", "workspaces"):
            (root / d).mkdir(parents=True, exist_ok=True)
        # no news / update notifications: they fetch from the network and cover the page
        notif = root / "settings" / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True)
        (notif / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
                   IPYTHONDIR=str(root / "ipython"), JUPYTER_PLATFORM_DIRS="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.log = open(root / "lab.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root / 'nb'}", "--LabApp.expose_app_in_browser=True",
             f"--LabApp.user_settings_dir={root / 'settings'}", f"--LabApp.workspaces_dir={root / 'workspaces'}",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root / "nb", env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def wait_ready(self, timeout: float = 90) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {(self.root / 'lab.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer in {timeout} s")

    def shutdown_kernels(self) -> None:
        """Kernels run in sessions of their own: ask the server to end them before it goes."""
        try:
            with urllib.request.urlopen(self.url("api/kernels"), timeout=5) as r:
                kernels = json.load(r)
            for k in kernels:
                req = urllib.request.Request(self.url(f"api/kernels/{k['id']}"), method="DELETE")
                urllib.request.urlopen(req, timeout=30).close()
        except OSError:
            pass

    def close(self) -> None:
        _stop(self.proc)
        self.log.close()


def _chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for f in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver"), log_output=str(profile.parent / "chromedriver.log"))
    return webdriver.Chrome(options=opts, service=service)


# ----------------------------------------------------------------------------------------------- page helpers
NOTEBOOK_STATE = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.content.model || !nb.sessionContext.session) return null;
const cells = nb.content.model.cells, out = {pending: 0, errors: [], kernel: nb.sessionContext.session.kernel.status};
for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i);
  if (c.type !== 'code') continue;
  if (!c.executionCount) out.pending += 1;
  for (const o of c.outputs.toJSON()) if (o.output_type === 'error') out.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
}
return out;"""

# page position of the board's cell (row, expert) and of a row header; scrolls the board into view first
CELL_XY = """
const gd = document.querySelector('.rl-panel .js-plotly-plot');
gd.scrollIntoView({block: 'center'});
const fl = gd._fullLayout, r = gd.getBoundingClientRect();
return [r.left + fl._size.l + fl.xaxis.l2p(arguments[1]), r.top + fl._size.t + fl.yaxis.l2p(arguments[0])];"""


def _wait(fn, timeout: float, what: str, poll: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _status(drv) -> str:
    return drv.execute_script("const s = document.querySelector('.rl-panel .rl-status'); return s ? s.innerText : ''")


def _p(drv) -> str | None:
    """The shown p(answer) of the current selection ('0.3801'), None while the selection is invalid."""
    return drv.execute_script(
        "const s = document.querySelector('.rl-panel .rl-status');"
        "const v = s && !s.querySelector('.rl-error') && s.querySelector('.rl-p-value'); return v ? v.innerText : null")


def _click_at(drv, xy) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    ab = ActionBuilder(drv)
    ab.pointer_action.move_to_location(int(xy[0]), int(xy[1]))
    ab.pointer_action.pause(0.3)  # plotly picks the hovered point; a real pointer rests before it clicks
    ab.pointer_action.click()
    ab.perform()


def _choose(drv, label: str, option: str) -> None:
    """Pick ``option`` in the panel's dropdown whose description is ``label`` (a real <select> change)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for box in drv.find_elements(By.CSS_SELECTOR, ".rl-panel .widget-dropdown"):
        if box.find_element(By.CSS_SELECTOR, "label").text.strip() == label:
            Select(box.find_element(By.TAG_NAME, "select")).select_by_visible_text(option)
            return
    raise AssertionError(f"no dropdown {label!r} in the panel")


def _selected(drv, label: str) -> str:
    return drv.execute_script(
        "for (const b of document.querySelectorAll('.rl-panel .widget-dropdown'))"
        "  if (b.querySelector('label').innerText.trim() === arguments[0]) {"
        "    const s = b.querySelector('select'); return s.options[s.selectedIndex].text; }"
        "return null;", label)


# ----------------------------------------------------------------------------------------------- the test
def test_notebook_03_in_a_real_browser(tmp_path):
    reason = _missing()
    if reason:
        print(f"SKIPPED browser test: {reason}")
        pytest.skip(reason)
    lab = drv = None
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        lab = Lab(tmp_path / "lab")
        shutil.copy(NOTEBOOK, lab.root / "nb" / NOTEBOOK.name)
        lab.wait_ready()
        drv = _chrome(tmp_path / "profile")
        drv.get(lab.url(f"lab/tree/{NOTEBOOK.name}"))
        state = lambda: drv.execute_script(NOTEBOOK_STATE)
        _wait(lambda: (s := state()) and s["kernel"] == "idle", 120, "the notebook and its kernel")
        drv.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        def finished():
            s = state()
            if s and s["errors"]:
                raise AssertionError("error output: " + "; ".join(s["errors"]))
            return s and s["pending"] == 0 and s["kernel"] == "idle"

        _wait(finished, 600, "Run All", poll=1.0)
        drv.save_screenshot(str(shots / "after_run_all.png"))
        assert not state()["errors"]

        # the board rendered: one cell per (MoE layer, expert) of the bundled model (6 x 64)
        n_cells = _wait(lambda: drv.execute_script(
            "const gd = document.querySelector('.rl-panel .js-plotly-plot');"
            "return gd && gd.data && gd.data[0].x.length"), 60, "the board")
        assert n_cells == 6 * 64
        # no stale error after Run All: the last cell cleared the panel, and the page agrees
        text = _status(drv)
        assert "Cannot mask" not in text and "Masked (0 experts" in text, text
        assert _selected(drv, "preset") == "none"
        p0 = _p(drv)
        assert p0 is not None

        # click the busiest expert of the first MoE layer: it is masked and p(answer) changes (every later layer reads
        # its output; in the last layer the busiest expert can move p by less than the 4 digits shown)
        row, expert = drv.execute_script(
            "const gd = document.querySelector('.rl-panel .js-plotly-plot'); const c = gd.data[0].marker.color;"
            "const E = 64, r = 0; let best = 0; for (let e = 1; e < E; e++) if (c[r * E + e] > c[r * E + best]) best = e;"
            "return [r, best];")
        _click_at(drv, drv.execute_script(CELL_XY, row, expert))
        p1 = _wait(lambda: (v := _p(drv)) != p0 and v, 60, "p(answer) after a click")
        assert f"L{row}: {expert}" in _status(drv) and _selected(drv, "preset") == "(custom)"
        assert drv.execute_script("return document.querySelector('.rl-panel .js-plotly-plot').data[1].x.length") == 1

        _choose(drv, "preset", "CEs")
        p2 = _wait(lambda: "preset CEs" in _status(drv) and _p(drv), 60, "the CEs preset")
        assert p2 != p0 and p2 != p1
        board = drv.find_element("css selector", ".rl-panel")
        drv.execute_script("arguments[0].scrollIntoView({block: 'start'})", board)
        board.screenshot(str(shots / "board.png"))
        if os.environ.get("ROUTERLENS_SCREENSHOTS"):
            out = Path(os.environ["ROUTERLENS_SCREENSHOTS"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / "board.png", out / "board.png")

        _choose(drv, "preset", "none")
        assert _wait(lambda: "preset none" in _status(drv) and _p(drv), 60, "preset none") == p0

        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"JavaScript console errors: {errors}"
    finally:
        if drv is not None:
            try:
                drv.save_screenshot(str(shots / "last.png"))
            except Exception:  # the browser may already be gone; cleaning up matters more
                pass
            drv.quit()
        if lab is not None:
            lab.shutdown_kernels()
            lab.close()
        print(f"browser test screenshots: {shots}")
