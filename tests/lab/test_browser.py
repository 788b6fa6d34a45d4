"""nbship's JupyterLab extension in a real browser (Playwright driving Debian's
chromium) against a real `jupyter lab` with the server extension: the steps' badges,
a problem appearing on its cell and line while typing and going away when fixed, Run
as pipeline (then cached), Test, a failed run selecting the cell it names, and a cell's
step changed from the form. Screenshots of
each state go to .nbship/test/lab/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import ROOT, SHOWCASE, wait_for
from tests.release.conftest import free_port

pytestmark = pytest.mark.slow
TOKEN = "lab-browser-token"
NB = "notebooks/marker_classifier.ipynb"
BUILT = ROOT / "nbship" / "labextension"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / ".nbship" / "test" / "lab"


def _skip_reason() -> str | None:
    if not (BUILT / "package.json").is_file():
        return ("the JupyterLab extension is not built (make labextension; it needs Node, "
                "which .ci/run installs)")
    if not Path(CHROMIUM).exists():
        return "not installed: chromium (make tools-lab; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "not installed: playwright (make venv)"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("project")
    (root / "notebooks").mkdir()
    shutil.copy(SHOWCASE, root / NB)
    shutil.copy(ROOT / "pyproject.toml", root)
    from nbship.lab.launch import prepare

    home = tmp_path_factory.mktemp("jupyter")
    env = prepare(home)  # what `nbship lab` configures
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env={**os.environ, **env, "JUPYTER_RUNTIME_DIR": str(home / "rt")},
        stdout=subprocess.DEVNULL, stderr=open(home / "lab.log", "wb"))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for("jupyter lab", up, 120)
        yield url, root
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def page(lab: tuple[str, Path]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    url, _ = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(f"{url}/lab/tree/{NB}?token={TOKEN}")
        tab.wait_for_selector(".nbship-badge", timeout=60_000)
        try:
            yield tab
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def train_cell(page: Any) -> Any:
    return page.locator(".jp-Cell", has=page.locator(".nbship-badge[data-step='train']"))


def test_the_five_steps_show_on_their_cells(page: Any) -> None:
    steps = page.locator(".nbship-badge[data-step]")
    wait_for("five steps' badges",
             lambda: len(set(steps.evaluate_all("els => els.map(e => e.dataset.step)"))) == 5,
             30)
    assert set(steps.evaluate_all("els => els.map(e => e.dataset.step)")) == {
        "load", "preprocess", "train", "evaluate", "validate"}
    assert page.locator(".nbship-badge[data-role='parameters']").count() == 1
    assert page.locator(".nbship-problem").count() == 0
    page.locator(".jp-SideBar [title^='nbship']").first.click()  # the side panel
    page.wait_for_selector(".nbship-parameters")
    assert page.locator("button.nbship-publish").is_disabled()  # no registry configured
    shot(page, "1-steps")


def test_a_problem_appears_on_its_cell_and_line_while_typing_and_goes_away(
        page: Any) -> None:
    cell = train_cell(page)
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    lines = editor.evaluate("e => e.innerText.split('\\n').length")
    page.keyboard.type("\nprint(learning_rate)")
    problem = cell.locator(".nbship-problem", has_text="learning_rate")
    problem.wait_for(timeout=2_000)  # debounced analysis: within 2 s of typing
    assert problem.get_attribute("data-line") == str(lines + 1)
    shot(page, "2-problem")
    for _ in range(len("print(learning_rate)") + 1):
        page.keyboard.press("Backspace")
    cell.locator(".nbship-problem").first.wait_for(state="detached", timeout=2_000)


def test_run_as_pipeline_then_again_from_the_cache(page: Any, lab: tuple[str, Path]) -> None:
    page.locator("button.nbship-run").click()
    state = page.locator(".nbship-state[data-status='succeeded']")
    state.wait_for(timeout=300_000)
    rows = page.locator(".nbship-step-status")
    ran = rows.evaluate_all("rs => rs.map(r => [r.dataset.step, r.dataset.status])")
    assert {s for s, status in ran if status == "ran"} >= {
        "load", "preprocess", "train", "evaluate", "validate"}
    assert "accuracy=" in state.inner_text()
    assert page.locator(".nbship-provenance").inner_text().endswith("provenance.json")
    shot(page, "3-run")
    page.locator("button.nbship-run").click()
    page.locator(".nbship-state[data-status='running']").wait_for(timeout=30_000)
    state.wait_for(timeout=300_000)
    again = rows.evaluate_all("rs => rs.map(r => [r.dataset.step, r.dataset.status])")
    assert {s for s, status in again if status == "cached"} >= {
        "load", "preprocess", "train", "evaluate", "validate"}
    shot(page, "4-cached")


def test_test_button_passes(page: Any) -> None:
    page.locator("button.nbship-test").click()
    page.locator(".nbship-state[data-status='running']").wait_for(timeout=30_000)
    state = page.locator(".nbship-state[data-status='succeeded']")
    state.wait_for(timeout=300_000)
    assert "passed" in state.inner_text()
    shot(page, "5-test")


def test_a_failed_run_selects_the_cell_and_line_it_names(page: Any) -> None:
    params = page.locator(".jp-Cell", has=page.locator(".nbship-badge[data-role='parameters']"))
    editor = params.locator(".cm-content")
    before = editor.inner_text()
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(before.replace("threshold = 0.9", "threshold = 1.1"))
    page.locator("button.nbship-run").click()
    page.locator(".nbship-state[data-status='failed']").wait_for(timeout=300_000)
    assert "validate" in page.locator(".nbship-step-status[data-status='failed']").inner_text()
    active = page.locator(".jp-Cell.jp-mod-active .nbship-badge[data-step='validate']")
    active.wait_for(timeout=5_000)  # the failing cell is selected, its line under the cursor
    page.locator(".jp-StatusBar-Widget", has_text="Ln 2, Col 1").first.wait_for(timeout=5_000)
    assert "line 2: step 'validate' failed" in page.locator(".nbship-error-message").inner_text()
    shot(page, "6-failed")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(before)
    page.keyboard.press("Control+s")


def test_a_cells_step_changed_from_the_form_is_saved_in_its_tags(
        page: Any, lab: tuple[str, Path]) -> None:
    _, root = lab
    cell = page.locator(".jp-Cell", has=page.locator(".nbship-badge[data-step='validate']"))
    cell.locator(".jp-InputPrompt").first.click()
    page.locator("button.nbship-edit").click()
    form = page.locator(".nbship-form")
    form.locator("input[name='step']").fill("gate")
    form.locator("input[name='prev']").fill("evaluate")
    form.locator("input[name='limits']").fill("cpu=2, memory=4Gi")
    shot(page, "7-form")
    page.locator(".jp-Dialog-button.jp-mod-accept").click()

    def saved() -> bool:
        try:
            nb = nbformat.read(root / NB, 4)
        except Exception:  # noqa: BLE001 - caught while Jupyter writes it
            return False
        return any("step:gate" in c.metadata.get("tags", []) for c in nb.cells)

    wait_for("the tags saved", saved, 10)
    nb = nbformat.read(root / NB, 4)
    tags = next(c.metadata["tags"] for c in nb.cells if "step:gate" in c.metadata.get("tags", []))
    assert "step:validate" not in tags and "prev:evaluate" in tags
    assert "limit:cpu:2" in tags and "limit:memory:4Gi" in tags
    page.locator(".nbship-badge[data-step='gate']").wait_for(timeout=5_000)
