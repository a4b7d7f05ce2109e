"""Tracking runs in MLflow (`main.py --mlflow URI`).

One MLflow run per training run, in an experiment named after the dataset
folder: every option as a parameter, the per-epoch history (from the run's
history.csv, so a resumed run's epochs are all there), the test metrics,
the figures, the reports and the published model with its companions as
artifacts. Only main.py imports this module, and only with --mlflow, so
MLflow is never loaded otherwise.

URI: a local folder (`./mlruns`, or `file:///abs/path`) is MLflow's file
store. MLflow 3 keeps that store in maintenance mode and refuses it unless
MLFLOW_ALLOW_FILE_STORE is set; a folder is what the user asked for here,
so the opt-in is given while the client is made, and nowhere else. Any
other URI (`http://host:5000`, `sqlite:///mlflow.db`, ...) goes to MLflow
unchanged.
"""

import contextlib
import dataclasses
import math
import os
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request

from errors import UserError

# MLflow refuses longer parameter values.
MAX_PARAM_LENGTH = 6000
# Metrics per log_batch request (MLflow's limit is 1000).
METRICS_PER_BATCH = 500
# A tracking server that does not answer in this many seconds is reported
# at once; MLflow's own retries would take minutes.
SERVER_CHECK_SECONDS = 10


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """An MLflow run being logged to."""

    client: object  # mlflow.MlflowClient
    run_id: str
    uri: str
    experiment: str

    def describe(self):
        return f"MLflow run {self.run_id} (experiment '{self.experiment}') at {self.uri}"


def local_folder(uri):
    """The absolute folder of a local-folder URI (a path or file:...), or
    None for any other URI (a server, a database)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (C:\ on Windows)
        return os.path.abspath(uri)
    return None


def resolved_uri(uri):
    """The tracking URI MLflow is given for `uri`: a local folder as an
    absolute file: URI (so a relative ./mlruns means one folder), anything
    else unchanged."""
    folder = local_folder(uri)
    return uri if folder is None else pathlib.Path(folder).as_uri()


@contextlib.contextmanager
def _file_store_allowed():
    """MLFLOW_ALLOW_FILE_STORE=true while MLflow makes a file store (it
    keeps the store once made), restored afterwards."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def _check_server(uri):
    """Raises UserError when an http(s) tracking server does not answer."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_CHECK_SECONDS):
            return
    except urllib.error.HTTPError:
        return  # it answered (perhaps asking for credentials): MLflow takes over
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"no MLflow tracking server answers at {uri} ({reason}); start it "
            f"(mlflow server) or give a local folder such as ./mlruns. Received: mlflow={uri}"
        ) from None


def client(uri):
    """An MlflowClient for `uri` (see the module docstring); returns
    (client, the tracking URI it uses). Raises UserError when the URI
    cannot be used."""
    import mlflow

    folder = local_folder(uri)
    if folder is not None:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"mlflow must be a folder or a tracking URI; this is a file. Received: mlflow={uri}")
        tracking_uri = resolved_uri(uri)
        with _file_store_allowed():
            return mlflow.MlflowClient(tracking_uri=tracking_uri), tracking_uri
    if urllib.parse.urlparse(uri).scheme in ("http", "https"):
        _check_server(uri)
    try:
        return mlflow.MlflowClient(tracking_uri=uri), uri
    except Exception as error:  # noqa: BLE001 - MLflow's message says what is wrong with the URI
        raise UserError(f"cannot use MLflow at {uri}: {_reason(error)}. Received: mlflow={uri}") from None


def _reason(error):
    return " ".join(str(error).split())[:300] or type(error).__name__


def _experiment_id(mlflow_client, name):
    """The id of the experiment `name`, created if missing (another run may
    create it at the same moment)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_run(uri, experiment, run_name, params, tags=None, resume_run_id=None):
    """Starts (or, with `resume_run_id`, continues) an MLflow run at `uri`
    in `experiment` and logs `params` ({name: value}, values as text).
    Returns a TrackedRun. Raises UserError when MLflow cannot be reached."""
    from mlflow.entities import Param, RunTag

    mlflow_client, tracking_uri = client(uri)
    try:
        if resume_run_id:
            # The options are the run's own: its parameters are already logged.
            mlflow_client.update_run(resume_run_id, status="RUNNING")
            return TrackedRun(mlflow_client, resume_run_id, tracking_uri, experiment)
        run = mlflow_client.create_run(_experiment_id(mlflow_client, experiment), run_name=run_name)
        mlflow_client.log_batch(
            run.info.run_id,
            params=[Param(name, str(value)[:MAX_PARAM_LENGTH]) for name, value in sorted(params.items())],
            tags=[RunTag(name, str(value)) for name, value in sorted((tags or {}).items())],
        )
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - reported as one line, before any training
        raise UserError(f"cannot start an MLflow run at {uri}: {_reason(error)}. Received: mlflow={uri}") from None
    return TrackedRun(mlflow_client, run.info.run_id, tracking_uri, experiment)


def _log_metric_batches(tracked, metrics):
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        tracked.client.log_batch(tracked.run_id, metrics=metrics[start : start + METRICS_PER_BATCH])


def log_history(tracked, history):
    """The per-epoch history ({column: array}, train_utils.read_history)
    as metrics with step = epoch (0-based, continuous across phases);
    missing values (NaN) are left out."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    epochs = [int(epoch) for epoch in history["epoch"]]
    metrics = [
        Metric(name, float(value), now, epoch)
        for name, values in history.items()
        if name != "epoch"
        for epoch, value in zip(epochs, values)
        if math.isfinite(value)
    ]
    _log_metric_batches(tracked, metrics)


def final_metrics(metrics, prefix=""):
    """The headline numbers of an evaluation's metrics.json dict, flat:
    accuracy, loss, macro/weighted F1, ROC AUC and the calibration summary,
    and for a multi-label run micro-F1, mAP, subset accuracy and Hamming
    loss (keys prefixed with `prefix`); undefined values (a mAP of None)
    left out."""
    calibration = metrics.get("calibration") or {}
    values = {
        "accuracy": metrics.get("accuracy"),
        "loss": metrics.get("loss"),
        "macro_f1": (metrics.get("macro_avg") or {}).get("f1"),
        "weighted_f1": (metrics.get("weighted_avg") or {}).get("f1"),
        "roc_auc_macro": (metrics.get("roc_auc") or {}).get("macro"),
        "roc_auc_micro": (metrics.get("roc_auc") or {}).get("micro"),
        **{name: calibration.get(name) for name in ("ece", "ece_uncalibrated", "brier", "nll", "temperature")},
    }
    if metrics.get("task") == "multi_label":  # label_metrics' dict: its own headline numbers
        values.update({
            "micro_f1": (metrics.get("micro_avg") or {}).get("f1"),
            "mAP": metrics.get("mAP"),
            "subset_accuracy": metrics.get("subset_accuracy"),
            "hamming_loss": metrics.get("hamming_loss"),
        })
    return {
        f"{prefix}{name}": float(value)
        for name, value in values.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    }


def log_metrics(tracked, values):
    """{name: number} as metrics of the run (step 0)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _log_metric_batches(tracked, [Metric(name, value, now, 0) for name, value in sorted(values.items())])


def log_files(tracked, paths, folder, by_category=False):
    """Copies files into the run's artifacts under `folder`; `by_category`:
    under `folder`/<category> for files of RESULTS_DIR/<category>/<stamp>/
    (figures/roc_auc/roc_auc.png)."""
    for path in paths:
        destination = folder
        if by_category:
            category = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
            destination = f"{folder}/{category}"
        tracked.client.log_artifact(tracked.run_id, path, destination)


def finish_run(tracked, status="FINISHED"):
    """Ends the run with `status` (FINISHED, FAILED or KILLED)."""
    tracked.client.set_terminated(tracked.run_id, status=status)


def end_failed_run(tracked, killed=False):
    """Marks the run FAILED (KILLED: interrupted) after a failure, quietly:
    the failure itself is what the user needs to see."""
    with contextlib.suppress(Exception):
        finish_run(tracked, "KILLED" if killed else "FAILED")


def viewing_hint(uri):
    """How to look at runs logged to a local folder, or None for a server
    (its own web page)."""
    folder = local_folder(uri)
    if folder is None:
        return None
    return (
        f"to browse: pip install mlflow, then MLFLOW_ALLOW_FILE_STORE=true mlflow ui "
        f"--backend-store-uri {pathlib.Path(folder).as_uri()}"
    )


def log_finished_run(tracked, history, metrics, figures, reports, model_files):
    """Everything a finished training run adds to its MLflow run, which
    then ends: the per-epoch `history`, the test `metrics` (metrics.json's
    dict, as test_* metrics), the `figures` and `reports` (files of
    RESULTS_DIR) and the `model_files` (the model and its companions).
    Raises UserError when MLflow fails."""
    try:
        log_history(tracked, history)
        log_metrics(tracked, final_metrics(metrics, prefix="test_"))
        log_files(tracked, figures, "figures", by_category=True)
        log_files(tracked, reports, "reports", by_category=True)
        log_files(tracked, model_files, "model")
        finish_run(tracked, "FINISHED")
    except Exception as error:  # noqa: BLE001 - the run's own files are all saved already
        raise UserError(
            f"the run finished and its files are saved, but logging it to {tracked.describe()} "
            f"failed: {_reason(error)}"
        ) from None
