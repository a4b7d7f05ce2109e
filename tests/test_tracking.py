"""MLflow tracking in a temporary local store (file:// URI, no server):
parameters, per-epoch and final metrics, figures and the model."""

import os

import numpy as np
import pytest

import tracking
from errors import UserError


def results_file(results, category, name, content=b"data"):
    """RESULTS_DIR/<category>/<stamp>/<name>, as the pipeline writes them."""
    path = results / category / "20261122-120000" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def store_client(store):
    """A client reading the store the way tracking.py writes it."""
    client, _ = tracking.client(str(store))
    return client


def test_a_run_in_a_local_store_holds_params_metrics_figures_and_model(tmp_path):
    store, results = tmp_path / "mlruns", tmp_path / "results"
    figure = results_file(results, "calibration", "reliability.png", b"\x89PNG fake")
    report = results_file(results, "metrics", "metrics.json", b"{}")
    model = tmp_path / "run" / "best_model.keras"
    model.parent.mkdir()
    model.write_bytes(b"model bytes")
    history = {
        "epoch": np.array([0.0, 1.0, 2.0]),
        "loss": np.array([1.2, 0.8, 0.5]),
        "val_accuracy": np.array([0.4, np.nan, 0.9]),  # a missing value is left out
    }
    metrics = {
        "accuracy": 0.75, "loss": 0.6, "macro_avg": {"f1": 0.7}, "weighted_avg": {"f1": 0.72},
        "roc_auc": {"macro": 0.9, "micro": None},
        "calibration": {"temperature": 1.8, "ece": 0.03, "ece_uncalibrated": 0.12, "brier": 0.3, "nll": 0.5},
    }

    tracked = tracking.start_run(
        str(store), experiment="materials", run_name="20261122-120000",
        params={"epochs": 3, "classes": ("a", "b"), "labels_csv": None}, tags={"run": "20261122-120000"},
    )
    tracking.log_finished_run(
        tracked, history=history, metrics=metrics, figures=[figure], reports=[report], model_files=[str(model)]
    )

    client = store_client(store)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "20261122-120000"
    assert client.get_experiment(run.info.experiment_id).name == "materials"
    assert run.data.params == {"epochs": "3", "classes": "('a', 'b')", "labels_csv": "None"}
    assert run.data.tags["run"] == "20261122-120000"
    losses = client.get_metric_history(tracked.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(losses, key=lambda m: m.step)] == [(0, 1.2), (1, 0.8), (2, 0.5)]
    assert sorted(m.step for m in client.get_metric_history(tracked.run_id, "val_accuracy")) == [0, 2]
    assert run.data.metrics["test_accuracy"] == 0.75 and run.data.metrics["test_ece"] == 0.03
    assert run.data.metrics["test_temperature"] == 1.8 and run.data.metrics["test_macro_f1"] == 0.7
    assert "test_roc_auc_micro" not in run.data.metrics  # undefined: left out
    artifacts = {
        item.path
        for folder in ("figures/calibration", "reports/metrics", "model")
        for item in client.list_artifacts(tracked.run_id, folder)
    }
    assert artifacts == {"figures/calibration/reliability.png", "reports/metrics/metrics.json", "model/best_model.keras"}
    local = client.download_artifacts(tracked.run_id, "model/best_model.keras", str(tmp_path / "back"))
    assert open(local, "rb").read() == b"model bytes"


def test_a_resumed_run_continues_its_mlflow_run_and_a_failed_one_is_marked(tmp_path):
    store = tmp_path / "mlruns"
    first = tracking.start_run(str(store), "data", "run-1", params={"epochs": 3})
    tracking.end_failed_run(first, killed=True)
    assert store_client(store).get_run(first.run_id).info.status == "KILLED"

    again = tracking.start_run(str(store), "data", "run-1", params={"epochs": 3}, resume_run_id=first.run_id)

    assert again.run_id == first.run_id
    assert store_client(store).get_run(first.run_id).info.status == "RUNNING"
    tracking.end_failed_run(again)
    assert store_client(store).get_run(first.run_id).info.status == "FAILED"


def test_the_file_store_opt_in_does_not_outlive_the_client(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)

    _, uri = tracking.client(f"file://{tmp_path / 'store'}")

    assert uri == (tmp_path / "store").as_uri()
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ


def test_local_folders_and_servers_are_told_apart(tmp_path):
    assert tracking.local_folder("mlruns") == os.path.abspath("mlruns")
    assert tracking.local_folder(f"file://{tmp_path}") == str(tmp_path)
    assert tracking.local_folder("http://localhost:5000") is None
    assert tracking.local_folder("sqlite:///mlflow.db") is None
    assert tracking.viewing_hint("http://localhost:5000") is None
    assert "mlflow ui --backend-store-uri file://" in tracking.viewing_hint("mlruns")


def test_a_server_that_does_not_answer_is_one_clear_error_at_once(tmp_path):
    # Port 9 (discard) is closed here: the connection is refused at once,
    # where MLflow's own retries would take minutes.
    with pytest.raises(UserError, match=r"no MLflow tracking server answers at http://127.0.0.1:9 .*Received: mlflow="):
        tracking.start_run("http://127.0.0.1:9", "data", "run", params={})


def test_a_file_where_the_store_should_be_is_refused(tmp_path):
    path = tmp_path / "mlruns"
    path.write_text("not a folder")
    with pytest.raises(UserError, match="mlflow must be a folder or a tracking URI"):
        tracking.start_run(str(path), "data", "run", params={})
