"""The MLflow UI, checked the way a person uses it: a real server, headless Chromium."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import SlowEpochs, evaluate_stage, free_port, serving, with_data
from conftest import train
from lyricist.tracking.store import experiment_url

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
def test_run_page_shows_name_metric_and_samples(tiny_cfg, tiny_data, tmp_path, ui, monkeypatch):
    from playwright.sync_api import sync_playwright

    tiny_cfg.logger.run_name = "tiny-lstm-ui-check"
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow's 10 s outlasts a tiny run
    # The store must exist before the server starts: train first, then browse.
    cfg = with_data(tiny_cfg, tiny_data)
    cfg.evaluate.dynamic_lrs, cfg.evaluate.krause_lrs, cfg.baseline.max_order = [], [], 3
    train(cfg, output_dir=tmp_path / "run", callbacks=[SlowEpochs(1.5)])  # the system-metrics page has samples
    evaluate_stage(tmp_path, cfg, tmp_path / "run" / "checkpoints" / "best.ckpt")  # test/ppl into the run
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
            # The evaluate stage's held-out result and the corpus the run read.
            page.get_by_text("test/ppl").first.wait_for(timeout=60_000)
            page.get_by_text(f"jaychou ({run.data.tags['data_md5']})").first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "mlflow_run.png"), full_page=True)

            page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/system-metrics")
            page.get_by_text("cpu_utilization_percentage").first.wait_for(timeout=60_000)
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)  # a chart drawn, not a spinner
            page.screenshot(path=str(shots / "mlflow_system_metrics.png"), full_page=True)

            # The link the training summary prints opens on the runs table (store.experiment_url).
            page.goto(experiment_url(ui, experiment.experiment_id))
            page.get_by_text("tiny-lstm-ui-check").first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "mlflow_experiment.png"), full_page=True)

            page.goto(f"{ui}/#/models/lyricist")
            page.get_by_text("Version 1").first.wait_for(timeout=60_000)
            page.get_by_text("champion").first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "mlflow_registered_model.png"), full_page=True)

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
