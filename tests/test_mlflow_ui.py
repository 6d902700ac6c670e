"""The MLflow UI, checked the way a person uses it: a real server, headless Chromium."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, serving, with_data
from lyricist.train import train

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def ui(tiny_cfg, tmp_path):
    """`mlflow server` on a free loopback port over the tiny run's store; always stopped."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               tiny_cfg.logger.tracking_uri, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with serving(command, f"http://127.0.0.1:{port}/health", cwd=tmp_path):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it with apt)")
def test_run_page_shows_name_metric_and_samples(tiny_cfg, tiny_data, tmp_path, ui):
    from playwright.sync_api import sync_playwright

    tiny_cfg.logger.run_name = "tiny-lstm-ui-check"
    # The store must exist before the server starts: train first, then browse.
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name("lyricist")
    [run] = client.search_runs([experiment.experiment_id])
    shots = Path(os.environ.get("LYRICIST_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
            page.get_by_text("tiny-lstm-ui-check").first.wait_for(timeout=60_000)
            page.get_by_text("val/ppl").first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "mlflow_run.png"), full_page=True)

            page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/artifacts")
            page.get_by_text("samples", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("samples", exact=True).first.click()
            page.get_by_text("epoch_002.txt").first.wait_for(timeout=60_000)
            page.get_by_text("epoch_002.txt").first.click()
            page.get_by_text("分开").first.wait_for(timeout=60_000)  # the generated lyrics
            page.screenshot(path=str(shots / "mlflow_samples.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "mlflow_run.png").stat().st_size > 10_000
