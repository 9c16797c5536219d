"""The whole journey in a real headless Chromium against a live server and a real Celery worker:
sign in, create a cohort, upload slides, labels and contours through the page, set splits in
place, queue a tiny run, watch it finish, look at its map in the viewer and read the report.

Screenshots of every page are written to test-artifacts/screenshots/."""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

USERNAME = "pathologist"
PASSWORD = "e2e-tumormap-pw"
# The tiny run of the scenario: two epochs of a few 32 px patches, the whole data path.
RUN_SETTINGS = {
    "epochs": "2", "patches_per_slide": "8", "arch": "resnet18", "patch_size": "32",
    "target_mpp": "2.0", "pretrained": "none", "num_workers": "0", "normalisation_patches": "32",
}  # fmt: skip
# Splits by case (write_demo_cohort: case k holds slides 2k (tumor) and 2k + 1 (normal)).
CASE_SPLITS = {"demo_000.svs": "train", "demo_002.svs": "val", "demo_004.svs": "test"}
TEST_TUMOR_SLIDE = "demo_004.svs"
# Training, inference of two splits and evaluation on a 2-core machine, with a worker that
# imports torch: generous, the run itself takes well under a minute.
RUN_TIMEOUT_MS = 300_000
UPLOAD_TIMEOUT_MS = 120_000


class ConsoleLog:
    """Console messages, uncaught page errors and failed requests of every page."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.errors.append(f"HTTP {r.status} {r.url}"),
        )
        page.on("requestfailed", self._failed)

    def _console(self, message: Any) -> None:
        line = f"{message.type}: {message.text} ({message.location.get('url', '')})"
        self.messages.append(line)
        if message.type == "error":
            self.errors.append(line)

    def _failed(self, request: Any) -> None:
        # Navigating away cancels the previous page's pending images and tiles: not an error.
        if request.failure and "ERR_ABORTED" not in request.failure:
            self.errors.append(f"request failed: {request.url} {request.failure}")


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


@pytest.fixture
def cohort_files(tmp_path: Path) -> Path:
    from slides.wsi.synthetic import write_demo_cohort

    folder = tmp_path / "cohort"
    write_demo_cohort(folder, n_slides=6, width=1024, height=768)
    return folder


def test_cohort_training_viewer_and_report_in_a_browser(
    transactional_db: None,
    live_server: Any,
    embedded_broker: dict[str, str],
    start_worker: Any,
    browser: Any,
    screenshots: Path,
    cohort_files: Path,
) -> None:
    from django.contrib.auth import get_user_model

    from evaluation.models import Evaluation
    from slides.models import Annotation, Slide
    from training.models import HeatMap, TrainingRun

    started = time.monotonic()
    get_user_model().objects.create_user(USERNAME, password=PASSWORD)
    # One worker for both queues (solo pool: the training task may start loader processes):
    # tissue masks on cpu, training and inference on gpu, evaluation on cpu.
    worker = start_worker(queues="gpu,cpu", env=embedded_broker)

    log = ConsoleLog()
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(30_000)
    page = context.new_page()
    log.attach(page)
    base = live_server.url

    def shot(name: str) -> None:
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)

    # -- sign in, create a cohort -------------------------------------------------------------
    page.goto(f"{base}/cohorts/")
    assert "/accounts/login/" in page.url  # pages need a login
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(re.compile(r"/cohorts/$"))
    page.fill("#id_name", "E2E cohort")
    page.fill("#id_description", "Six synthetic slides uploaded through the browser")
    shot("01-cohort-list")
    page.click("#cohort-create button[type=submit]")
    page.wait_for_url(re.compile(r"/cohorts/\d+/$"))
    cohort_id = int(page.url.rstrip("/").rsplit("/", 1)[1])

    # -- upload slides (resumable, checksummed), the label CSV, the contours ------------------
    slides = sorted(cohort_files.glob("*.svs"))
    assert len(slides) == 6
    page.set_input_files("#slide-files", [str(p) for p in slides])
    page.wait_for_function(
        "document.querySelectorAll('#upload-list li.upload[data-state=done]').length === 6",
        timeout=UPLOAD_TIMEOUT_MS,
    )
    assert page.locator("#upload-list progress").evaluate_all(
        "bars => bars.every(b => b.value === 100)"
    )
    page.wait_for_function("document.querySelectorAll('#slides tbody tr').length === 6")
    assert Slide.objects.filter(cohort_id=cohort_id, state="ready").count() == 6
    uploaded = Slide.objects.filter(cohort_id=cohort_id).values_list("md5", flat=True)
    assert all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in uploaded)

    page.set_input_files("#label-file", str(cohort_files / "labels.csv"))
    page.click("#label-form button[type=submit]")
    page.wait_for_selector("#label-status .ok")
    with (cohort_files / "labels.csv").open() as handle:
        expected = {row["filename"]: row["label"] for row in csv.DictReader(handle)}
    labels = dict(
        Slide.objects.filter(cohort_id=cohort_id).values_list("original_filename", "label")
    )
    assert labels == expected

    # Splits set in place, one case at a time (a split belongs to the whole case).
    for filename, split in CASE_SPLITS.items():
        row = page.locator(f'#slides tr[data-filename="{filename}"]')
        row.locator('select[data-field="split"]').select_option(split)
        page.wait_for_function(
            "([name, split]) => document.getElementById('table-status').textContent"
            ".includes(`split of ${name} is ${split}`)",
            arg=[filename, split],
        )
    splits = dict(
        Slide.objects.filter(cohort_id=cohort_id).values_list("original_filename", "split")
    )
    assert splits == {
        "demo_000.svs": "train", "demo_001.svs": "train", "demo_002.svs": "val",
        "demo_003.svs": "val", "demo_004.svs": "test", "demo_005.svs": "test",
    }  # fmt: skip

    page.set_input_files("#contour-files", [str(p) for p in sorted(cohort_files.glob("*.geojson"))])
    page.click("#contour-form button[type=submit]")
    page.wait_for_selector("#contour-status .ok")
    tumor_slides = Slide.objects.filter(cohort_id=cohort_id, label="tumor")
    assert all(Annotation.objects.filter(slide=s).exists() for s in tumor_slides)
    page.wait_for_function(
        f"document.querySelector('#slides tr[data-filename=\"{TEST_TUMOR_SLIDE}\"] td.num')"
        ".textContent.trim() !== '0'"
    )
    page.locator("#slides").scroll_into_view_if_needed()
    page.wait_for_function(  # thumbnails drawn before the screenshot
        "Array.from(document.querySelectorAll('#slides img')).every(i => i.complete)"
    )
    shot("02-cohort")

    # -- queue one tiny run with evaluation, watch it finish without reloading ----------------
    page.click("nav.tabs >> text=Training")
    page.wait_for_url(re.compile(r"/training/$"))
    page.check('input[name="config"][data-alpha="0.2"][data-beta="0.0"]')
    page.click("details.advanced summary")
    for name, value in RUN_SETTINGS.items():
        field = page.locator(f'#sweep-form [name="{name}"]')
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    assert page.is_checked("#set-evaluate")
    page.click("#queue-button")
    page.wait_for_selector("#sweep-status.ok")
    run = TrainingRun.objects.get(cohort_id=cohort_id)
    assert (run.alpha, run.beta) == (0.2, 0.0)
    assert {k: run.config[k] for k in ("epochs", "patches_per_slide", "arch", "patch_size")} == {
        "epochs": 2, "patches_per_slide": 8, "arch": "resnet18", "patch_size": 32,
    }  # fmt: skip
    assert run.config["target_mpp"] == 2.0 and run.config["pretrained"] == "none"

    card = page.locator(f"#run-{run.pk}")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    try:
        card.locator(".badge.status-succeeded").wait_for(timeout=RUN_TIMEOUT_MS)
    except Exception:
        run.refresh_from_db()
        pytest.fail(f"run {run.status}: {run.error}\n{worker.log()[-4000:]}")
    assert card.locator("progress").evaluate("bar => bar.value") == 100
    assert card.locator(".pct").inner_text() == "100%"
    # The worker chains inference of the validation and test maps and the evaluation.
    try:
        card.locator(".evaluation", has_text="Test AUC").wait_for(timeout=RUN_TIMEOUT_MS)
    except Exception:
        pytest.fail(f"no evaluation of run {run.pk}:\n{worker.log()[-4000:]}")
    assert not navigations, f"the training page reloaded: {navigations}"
    card.locator("svg.chart").first.wait_for()
    shot("03-training")
    evaluation = Evaluation.objects.get(run=run, split="test")
    assert evaluation.auc_tissue is not None

    # -- the run, then the viewer on a test tumor slide with map and contours ------------------
    card.locator("text=Details and maps").click()
    page.wait_for_url(re.compile(rf"/runs/{run.pk}/$"))
    page.locator(f"#run-{run.pk} svg.chart").first.wait_for()
    shot("04-run")
    heatmap = HeatMap.objects.get(run=run, slide__original_filename=TEST_TUMOR_SLIDE)
    page.click(f"text={TEST_TUMOR_SLIDE}")
    page.wait_for_url(re.compile(rf"/slides/{heatmap.slide_id}/\?run={run.pk}"))
    page.wait_for_function(
        "id => document.getElementById('osd-a').dataset.map === id", arg=str(heatmap.pk)
    )
    page.wait_for_function(
        "document.querySelectorAll('#osd-a svg.contour-layer path.truth-tumor').length > 0"
    )
    assert page.locator("#run-select").input_value() == str(run.pk)
    assert re.search(r"\d+ (µm|mm)", page.locator("#osd-a .scale-bar").inner_text())
    assert page.get_attribute("#dl-tiff", "href") == f"/api/heatmaps/{heatmap.pk}/tiff"
    page.focus("#opacity")  # the sliders work from the keyboard: 0.5 -> 0.7
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.locator("#opacity-value").inner_text() == "0.70"
    page.wait_for_timeout(800)  # tiles of the current view
    shot("05-viewer-map")
    page.check("#mode-errors")
    page.wait_for_function("document.getElementById('osd-a').dataset.errors === 'drawn'")
    assert page.locator("#osd-a .errors g[mask]").count() >= 3
    page.wait_for_timeout(500)
    shot("06-viewer-errors")

    # -- the report: the grid has a number for alpha 0.2 / beta 0 ------------------------------
    page.goto(f"{base}/cohorts/{cohort_id}/report/")
    cell = page.locator('#panel-all-auc-tissue td.auc[data-alpha="0.2"][data-beta="0.0"]')
    assert re.fullmatch(r"\d\.\d{3}", cell.inner_text().strip()), cell.inner_text()
    assert float(cell.inner_text()) == pytest.approx(evaluation.auc_tissue, abs=5e-4)
    assert page.locator('a:has-text("CSV")').get_attribute("href").startswith("/api/reports/csv?")
    page.wait_for_function("document.querySelector('img.curves-img').complete")
    assert page.locator("img.curves-img").evaluate("img => img.naturalWidth") > 0
    shot("07-report")

    context.close()
    assert not log.errors, "\n".join([*log.errors, "-- all console messages:", *log.messages])
    # Kept in view: the browser test has a budget of a few minutes on a 2-core machine.
    print(f"browser scenario took {time.monotonic() - started:.0f} s")


def test_pages_need_a_login_and_hide_other_peoples_cohorts(client: Any, db: None) -> None:
    """Every page answers a signed-out visitor with the login page, someone outside the cohort
    with 404 (never 403: other cohorts' existence stays hidden), and a viewer without the
    manager's controls."""
    from django.contrib.auth import get_user_model

    from slides.models import Membership, Slide
    from slides.services import cohort_create
    from training.mil.config import RunConfig
    from training.models import TrainingRun

    users = get_user_model().objects
    owner = users.create_user("owner", password="pw-owner-1")
    viewer = users.create_user("viewer", password="pw-viewer-1")
    users.create_user("stranger", password="pw-stranger-1")
    cohort = cohort_create(name="private", owner=owner)
    Membership.objects.create(cohort=cohort, user=viewer, role="viewer")
    slide = Slide.objects.create(cohort=cohort, original_filename="a.svs", state="ready")
    run = TrainingRun.objects.create(
        cohort=cohort, config=RunConfig(alpha=0.2, beta=0.0).to_dict(), alpha=0.2, beta=0.0
    )
    pages = [
        f"/cohorts/{cohort.pk}/",
        f"/cohorts/{cohort.pk}/slides-table",
        f"/cohorts/{cohort.pk}/training/",
        f"/cohorts/{cohort.pk}/report/",
        f"/runs/{run.pk}/",
        f"/slides/{slide.pk}/",
    ]
    for url in ["/cohorts/", *pages]:
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url

    client.login(username="stranger", password="pw-stranger-1")
    assert b"private" not in client.get("/cohorts/").content
    for url in pages:
        assert client.get(url).status_code == 404, url

    client.login(username="viewer", password="pw-viewer-1")
    detail = client.get(f"/cohorts/{cohort.pk}/").content.decode()
    assert "private" in detail and 'id="slide-files"' not in detail
    assert 'id="member-form"' not in detail and 'class="inline-edit"' not in detail
    training = client.get(f"/cohorts/{cohort.pk}/training/").content.decode()
    assert 'id="sweep-form"' not in training
    for url in pages:
        assert client.get(url).status_code == 200, url
    assert client.get(f"/cohorts/{cohort.pk}/report/curves.png").status_code == 404  # no scores

    client.login(username="owner", password="pw-owner-1")
    assert 'id="slide-files"' in client.get(f"/cohorts/{cohort.pk}/").content.decode()
    response = client.post("/cohorts/", {"name": "private"})  # the name is taken
    assert response.status_code == 400 and b"exists already" in response.content
    response = client.post("/cohorts/", {"name": "second", "default_location": "Lung"})
    assert response.status_code == 302
    assert client.get(response["Location"]).status_code == 200
