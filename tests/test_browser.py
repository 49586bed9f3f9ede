"""01_eda in a real JupyterLab, in a real (headless) Chromium: run it, move the sliders, see it redraw.

Needs Debian's chromium at /usr/bin/chromium and the Python Playwright driver
(``scripts/install_browser.sh`` installs both; ``make test`` calls it). No browser is downloaded.
Without them the test skips and says why (``KAGGLE_UTILS_REQUIRE_BROWSER=1`` turns that into a
failure). Screenshots land in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("KAGGLE_UTILS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
# JupyterLab user settings: render every cell (no windowing) and ask for no news or updates
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "autoStartDefaultKernel": True,
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _unavailable(reason: str):
    """Skip with the reason, or fail where the browser test is required (CI)."""
    if os.environ.get("KAGGLE_UTILS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KAGGLE_UTILS_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _requirements():
    if not CHROMIUM.exists():
        _unavailable(
            f"{CHROMIUM} not found: install Debian's chromium (scripts/install_browser.sh as root, "
            "or `apt-get install -y chromium`)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Python playwright not installed: `.venv/bin/pip install playwright`")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lab(tmp_path, repo_root):
    """JupyterLab with no token on a free loopback port, serving a copy of the notebooks and a
    tiny synthetic dataset (found by the notebook through KAGGLE_UTILS_DATA)."""
    _requirements()  # skip (or fail, where required) before starting anything
    from kaggle_utils.synthetic import generate

    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(repo_root / "notebooks" / "01_eda.ipynb", root / "notebooks")
    data = generate(tmp_path / "data", n_train_cars=2, n_test_cars=1, size=(160, 240), seed=3)
    settings = tmp_path / "settings"
    for rel, values in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(values))
    port = _free_port()
    env = {
        **os.environ,
        "KAGGLE_UTILS_DATA": str(data),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter_runtime"),
        "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")]),
    }
    log = (tmp_path / "jupyterlab.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.token=",
        "--ServerApp.password=",
        "--ServerApp.ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with no_proxy.open(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "JupyterLab did not start:\n"
                    + (tmp_path / "jupyterlab.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


def _widget(page, slider_label: str):
    """The viewer (VBox) whose controls include the slider with this description."""
    slider = page.locator(
        ".widget-hslider", has=page.locator(".widget-label", has_text=slider_label)
    )
    return page.locator(".widget-vbox", has=slider).last, slider


def _src(img) -> str:
    return img.get_attribute("src") or ""


def _wait_new_src(img, old: str, timeout_s: float = 45) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = _src(img)
        if new and new != old:
            return new
        time.sleep(0.2)
    raise AssertionError(f"widget image did not change within {timeout_s}s")


def _settled(img, caption, text: str, quiet_s: float = 1.5, timeout_s: float = 60) -> str:
    """Wait until the caption shows ``text`` and the picture stopped changing (renders of the
    intermediate slider values have all arrived)."""
    deadline = time.monotonic() + timeout_s
    last, since = _src(img), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _src(img)
        if now != last:
            last, since = now, time.monotonic()
        elif text in caption.inner_text() and time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"widget did not settle on {text!r}: caption {caption.inner_text()!r}")


def _readout(slider) -> str:
    return slider.locator(".widget-readout").inner_text().strip()


def test_eda_notebook_widgets_in_jupyterlab(lab):
    sync_playwright = _requirements()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.log")]:
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            page.goto(f"{lab}/lab/tree/notebooks/01_eda.ipynb", wait_until="domcontentloaded")
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
            # a kernel chooser may still ask once: accept the notebook's own kernel (python3)
            dialog = page.locator(".jp-Dialog")
            try:
                dialog.wait_for(timeout=3_000)
                dialog.locator(".jp-mod-accept").click()
            except PlaywrightTimeout:
                pass
            # wait for the kernel to be ready, then Run > Run All Cells
            page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            browse, angle = _widget(page, "angle")
            weights, kernel = _widget(page, "kernel")
            browse_img = browse.locator("img.widget-image")
            weights_img = weights.locator("img.widget-image")
            try:
                weights_img.wait_for(timeout=90_000)
                browse_img.wait_for(timeout=10_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "00_run_all.png"), full_page=True)
            errors = page.locator(
                ".jp-OutputArea-output[data-mime-type*='stderr']", has_text="Error"
            )
            assert errors.count() == 0, errors.first.inner_text()
            # the notebook's static figures rendered too
            figures = page.locator(".jp-OutputArea-output img")
            assert figures.count() >= 6
            figures.nth(2).scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "01_figures.png"))

            # angle slider: keyboard on the handle -> the overlay browser draws another view
            browse.scroll_into_view_if_needed()
            browse.screenshot(path=str(ARTIFACTS / "02_overlay_angle1.png"))
            before_src, before_px = _src(browse_img), browse_img.screenshot()
            assert _readout(angle) == "1"
            handle = angle.locator(".noUi-handle")
            handle.focus()
            for _ in range(4):
                handle.press("ArrowRight")
            _wait_new_src(browse_img, before_src)
            assert _readout(angle) == "5"
            _settled(browse_img, browse.locator(".widget-html"), "_05")
            browse.screenshot(path=str(ARTIFACTS / "03_overlay_angle5.png"))
            assert browse_img.screenshot() != before_px
            assert "_05" in browse.locator(".widget-html").inner_text()

            # kernel slider: a wider pooling kernel -> a wider boundary band in the heat map
            weights.scroll_into_view_if_needed()
            weights.screenshot(path=str(ARTIFACTS / "04_weights_default_kernel.png"))
            caption = weights.locator(".widget-html")
            band_before = caption.inner_text()
            k_before = int(_readout(kernel))
            before_src, before_px = _src(weights_img), weights_img.screenshot()
            handle = kernel.locator(".noUi-handle")
            handle.focus()
            for _ in range(5):
                handle.press("ArrowRight")
            _wait_new_src(weights_img, before_src)
            k_after = int(_readout(kernel))
            assert k_after == k_before + 10  # five steps of 2 (odd kernels only)
            _settled(weights_img, caption, f"kernel {k_after} px")
            weights.screenshot(path=str(ARTIFACTS / "05_weights_wider_kernel.png"))
            assert weights_img.screenshot() != before_px
            band_after = caption.inner_text()
            assert f"kernel {k_after} px" in band_after, band_after

            def band_px(text: str) -> int:
                return int(text.split("band ")[1].split(" px")[0].replace(",", ""))

            assert band_px(band_after) > band_px(band_before), (band_before, band_after)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "99_failure.png"), full_page=True)
            (ARTIFACTS / "console.log").write_text("\n".join(console))
            raise
        finally:
            browser.close()
