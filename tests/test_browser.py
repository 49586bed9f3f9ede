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
    with _serve(tmp_path, root, repo_root, {"KAGGLE_UTILS_DATA": str(data)}) as url:
        yield url


@contextlib.contextmanager
def _serve(tmp_path: Path, root: Path, repo_root: Path, extra_env: dict[str, str]):
    """Run JupyterLab over `root` (kernels start in the notebook's folder, as for a user) until
    the block ends; its log is tmp_path/jupyterlab.log."""
    settings = tmp_path / "settings"
    for rel, values in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(values))
    port = _free_port()
    env = {
        # the user's shell: no data or project root pointed at by the environment
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("KAGGLE_UTILS_DATA", "KAGGLE_UTILS_PROJECT_ROOT")
        },
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter_runtime"),
        "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")]),
        **extra_env,
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

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.log")]:
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            _open_and_run_all(page, lab, "01_eda.ipynb")

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


# The demo member's stand-in: the same name and file as params/demo's, trains in seconds on CPU.
TINY_DEMO_MEMBER = """\
name: unet_resnet18
model: {arch: unet, encoder: resnet18, encoder_weights: null, decoder_channels: [16, 16, 8, 8, 8]}
loss: {bce: 1.0, dice: 1.0, boundary_weight: 2.0}
optimizer: {name: adamw, lr: 0.003}
batch_size: 4
n_folds: 2
fold: 0
num_workers: 0
stages:
  - {size: 32x64, epochs: 1}
"""


@pytest.fixture()
def demo_lab(tmp_path, repo_root):
    """A project as `make demo` leaves it (params/demo, data/synthetic at the root; runs/demo is
    written by 03 here), served by JupyterLab with nothing in the environment pointing at it:
    the kernels start in notebooks/ and must find the root by themselves."""
    _requirements()
    from kaggle_utils.synthetic import generate

    root = tmp_path / "project"
    shutil.copytree(repo_root / "params" / "demo", root / "params" / "demo")
    (root / "params" / "demo" / "unet_resnet18.yaml").write_text(TINY_DEMO_MEMBER)
    generate(root / "data" / "synthetic", n_train_cars=4, n_test_cars=1, size=(160, 240), seed=3)
    (root / "notebooks").mkdir()
    for name in ("01_eda.ipynb", "03_train_member.ipynb"):
        shutil.copy(repo_root / "notebooks" / name, root / "notebooks")
    with _serve(tmp_path, root, repo_root, {}) as url:
        yield url, root


def _open_and_run_all(page, url: str, notebook: str) -> None:
    """Open a notebook as shipped, accept its own kernel if a chooser asks, wait for the kernel
    to be idle, then Run > Run All Cells (what a user clicks)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{url}/lab/tree/notebooks/{notebook}", wait_until="domcontentloaded")
    panel = page.locator(".jp-NotebookPanel:has(.jp-Cell)").last
    panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(timeout=3_000)
        dialog.locator(".jp-mod-accept").click()
    except PlaywrightTimeout:
        pass
    page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _run_all(page, url: str, notebook: str, timeout_s: float = 300) -> None:
    """Open a notebook, Run All Cells, wait until every code cell has run (a number in each
    prompt), and fail on an error output."""
    _open_and_run_all(page, url, notebook)
    prompts = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt")
    deadline = time.monotonic() + timeout_s
    while True:
        texts = [t.strip() for t in prompts.all_inner_texts()]
        if texts and all(any(ch.isdigit() for ch in t) for t in texts):
            break
        errors = page.locator(".jp-OutputArea-output[data-mime-type*='stderr']", has_text="Error")
        if errors.count():
            raise AssertionError(f"{notebook}: {errors.first.inner_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{notebook}: cells still running after {timeout_s}s: {texts}")
        time.sleep(1)
    errors = page.locator(".jp-OutputArea-output[data-mime-type*='stderr']", has_text="Error")
    assert errors.count() == 0, errors.first.inner_text()


def test_notebooks_as_shipped_find_the_demo_from_notebooks_dir(demo_lab):
    """03 then 01, opened as shipped (no parameter edited) in a kernel started in notebooks/:
    03 trains into <root>/runs/demo, 01 reads <root>/data/synthetic and shows 03's measured
    Dice by angle beside its heuristics."""
    url, root = demo_lab
    sync_playwright = _requirements()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _run_all(page, url, "03_train_member.ipynb")
            page.screenshot(path=str(ARTIFACTS / "10_train_member.png"), full_page=True)
            stage = root / "runs" / "demo" / "unet_resnet18" / "s1_32x64"
            assert (stage / "oof.csv").is_file() and (stage / "metrics.json").is_file()
            assert not (root / "notebooks" / "runs").exists()
            assert page.locator(".jp-OutputArea-output img").count() >= 2  # curves, worst

            _run_all(page, url, "01_eda.ipynb")
            page.screenshot(path=str(ARTIFACTS / "11_eda_measured.png"), full_page=True)
            text = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").inner_text()
            assert str(root / "data" / "synthetic") in text  # make demo's data, found
            assert "No measured Dice yet" not in text
            measured = page.locator(
                ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell",
                has_text="measured_angle_difficulty",
            )
            assert measured.locator(".jp-OutputArea-output img").count() == 1
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "19_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
