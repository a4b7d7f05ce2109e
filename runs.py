"""Which runs one main.py invocation trains, and how each is opened: one path
for every mode.

    python main.py --image_dir DIR                   # one run
    python main.py --resume [RUN]                    # the interrupted run, with its own options
    python main.py --image_dir DIR --backbone a,b    # a series: one run each on one split, then compared
    python main.py --image_dir DIR --folds K         # K fold runs (--resume [ID] continues them)
    TF_CONFIG=... python main.py --image_dir DIR     # one run, on every worker at once
    python main.py --image_dir DIR --lr_find         # the learning-rate range test alone: nothing trained

`plan_runs` turns the options into a `Plan`: the strategy the runs train
under and the runs themselves, handed out one at a time (`Plan.runs`, a
`Planned` each: its options, title, and the split it shares or the
interrupted run it continues). `opened` is the one path by which every run
of every mode starts: its folder reserved (a new run, or the interrupted
one), locked for this process (run_lock.py), announced, given its device
and machine, seeded; with several workers the chief opens it and the
others learn its id and options from the chief; a run that fails before an
epoch was kept is removed. main.py runs its stages inside, on a `Run`.
`finish` then does what the mode asks once its runs are trained: a series
chooses the run with the lowest validation loss and compares them
(compare.py); folds are scored and summed up (cross_validation.py), and
the fold run with the lowest validation-fold loss is chosen. The chosen run
is then published as --publish says (publishing.decide).
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import time

import numpy as np

import artifacts
import audit
import backbones
import compare
import config
import console
import cross_validation
import devices
import figures
import lr_finder
import publishing
import report
import resume
import run_lock
import splits
import train_utils
from errors import UserError

# The tags of the options a resumed run, or a worker other than the chief,
# may give with another value than the run's own (config.py says what each
# tag means). A resumed run takes all of RESUMED_OWN from its command line;
# a worker only the worker_local ones it gives (and --resume).
RESUMED_OWN = ("display", "run_locator")
WORKER_OWN = ("display", "worker_local", "run_locator", "output")


# ---------------------------------------------------------------- a run


@dataclasses.dataclass
class Run:
    """One run as main.py trains it: who it is (its options, id and folder,
    where a resumed run stands, the device and machine it trains on), then
    what its stages work out, stage by stage."""

    options: config.Config
    stamp: str  # the run id: its folder ARTIFACTS_DIR/runs/<stamp>, its results' stamp
    folder: str  # the run folder: model, companions, resume points
    device: devices.DeviceSetup
    machine: object  # train_utils.OneMachine or WorkerMachine: where the model and batches come from, how it fits
    point: resume.ResumePoint | None = None  # where the run --resume continues stands
    # A fold's split, or with several backbones the first run's; None: the run scans.
    index: splits.DatasetIndex | None = None
    # Whose scan, split and dataset figures this run shares (None: its own).
    shared_from: str | None = None
    model: object = None
    # After training: the best model, loaded once for the stages after it (main.BestModel).
    best: object = None
    datasets: dict = dataclasses.field(default_factory=dict)
    balancing: object = None  # balance.Balance: how training balances its classes
    # The rate --learning_rate auto found (the range test's, `finding`:
    # lr_finder.Finding; a resumed run's as saved); None: --learning_rate's own.
    learning_rate: float | None = None
    finding: object = None
    history_path: str | None = None
    finetune_start: int | None = None  # first fine-tuning epoch (0-based), if any
    training_seconds: float | None = None
    stopped: str | None = None  # how the --time budget stopped training (train_utils.TimeBudget.line)
    # The best model's predictions on the test split (metrics.Evaluation),
    # built once by the evaluation stage and handed to every figure after it.
    evaluation: object = None
    scores: dict | None = None
    # Without the test images that have a near-copy in training (a
    # pre-split folder): (their number, the Evaluation, its scores), or None.
    clean_test: tuple | None = None
    export_report: dict | None = None  # with --export
    drawn: list = dataclasses.field(default_factory=list)  # figure paths, in stage order
    tracked: object = None  # the MLflow run (tracking.TrackedRun) with --mlflow
    report_path: str | None = None  # results/report/<run>/report.html
    # A run of a series or of folds: the mode publishes its chosen run once all are trained (`finish`).
    chosen_later: bool = False
    publishing: object = None  # publishing.Decision: whether the run was published, and why

    def results_path(self, category, *names):
        """RESULTS_DIR/<category>/<stamp>/<names...>."""
        return os.path.join(self.options.results_dir, category, self.stamp, *names)

    def artifact_path(self, *names):
        """A path inside this run's own folder."""
        return os.path.join(self.folder, *names)

    @property
    def model_path(self):
        """This run's best model (published only once training finished)."""
        return self.artifact_path(artifacts.MODEL_FILE)

    def update_run_config(self, **entries):
        """Adds `entries` to this run's run_config.json."""
        saved = artifacts.read_run_config(self.folder)
        artifacts.write_json(self.artifact_path(artifacts.RUN_CONFIG_FILE), {**saved, **entries})


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Planned:
    """One run a plan hands out, before it is opened: its options, the
    title said before it when there are several, the split it trains on
    when it does not scan its own (`index`, shared from `shared_from`),
    the interrupted run it continues (`resumes`: run id, folder,
    ResumePoint), and for a fold (backbone, fold number) in its
    cross-validation."""

    options: config.Config
    title: str = ""
    index: splits.DatasetIndex | None = None
    shared_from: str | None = None
    resumes: tuple | None = None
    fold: tuple | None = None
    locked: bool = False  # its run lock is held already (Plan.lock)


@dataclasses.dataclass
class Plan:
    """What one main.py invocation trains: its mode ("one", "series" or
    "folds"), the command's options (a resumed run's or cross-validation's
    own), the options given on the command line, the strategy every run
    trains under and, on several machines, the Workers; the runs (an
    iterator of Planned) and those trained so far."""

    mode: str
    options: config.Config
    given: dict
    strategy: object
    workers: devices.Workers | None = None
    runs: object = ()
    trained: list = dataclasses.field(default_factory=list)
    cross_validation: object = None  # cross_validation.CrossValidation of the folds
    index: splits.DatasetIndex | None = None  # the folds' whole dataset
    # The lock of the run --resume continues, taken before its state and
    # options are read (`open_here` keeps it); closing releases it.
    lock: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    @property
    def writes(self):
        """Whether this process writes the runs' files (on several
        machines only the chief does)."""
        return self.workers is None or self.workers.cluster.is_chief


def plan_runs(options, given, cluster=None):
    """The Plan of an invocation of main.py with `options` (`given`: those
    on its command line; `cluster`: this process's devices.Cluster when
    TF_CONFIG names several workers). What can be checked before the runs
    start is checked here: a run --resume names is found and its options
    compared (before waiting for other workers), under its run lock, held
    in Plan.lock; nothing is written but a new cross-validation's folds and
    that lock. Raises UserError."""
    names = backbones.backbone_names(options.backbone)
    folds = cross_validation.wants_folds(options.artifacts_dir, options.resume, options.folds)
    if cluster is not None and folds:
        raise UserError(
            "cross-validation trains the folds on one machine, not with TF_CONFIG workers: leave --folds out "
            f"of a multi-worker run. Received: folds={options.folds}, resume={options.resume}"
        )
    if cluster is not None and lr_finder.is_asked(options.learning_rate, options.lr_find):
        raise UserError(
            "the learning-rate range test runs on one machine, not with TF_CONFIG workers: give --learning_rate "
            f"a number (found by --lr_find on one machine). Received: learning_rate={options.learning_rate}, "
            f"lr_find={options.lr_find}"
        )
    if cluster is not None and len(names) > 1:
        raise UserError(
            "several backbones train on one machine, not with TF_CONFIG workers: give one "
            f"--backbone per multi-worker run. Received: backbone={options.backbone}"
        )
    if cluster is not None and (options.ema or options.time):
        # --ema needs model.fit's validation hooks (SwapEMAWeights); --time
        # would let each worker's clock decide alone whether fine-tuning starts.
        raise UserError(
            "--ema and --time train on one machine, not with TF_CONFIG workers: leave them out of a multi-worker "
            f"run. Received: ema={options.ema}, time={options.time}"
        )
    if not folds and len(names) > 1 and options.resume:
        raise UserError(
            "--resume continues one run: leave --backbone out (the run keeps its own). "
            f"Received: backbone={options.backbone}"
        )
    resumed = None  # what --resume continues: (run id, folder, ResumePoint), or a cross-validation's state
    lock = contextlib.ExitStack()
    with lock:  # released here if anything below fails; the Plan keeps it otherwise
        if cluster is None or cluster.is_chief:
            try:  # before training, not after it
                artifacts.check_publishable(options.artifacts_dir)
            except artifacts.CompanionError as error:
                raise UserError(str(error)) from None
            if options.resume:
                if folds:  # a cross-validation's id, or one of its runs' (then the newest unfinished one)
                    named = options.resume in cross_validation.ids(options.artifacts_dir)
                    resumed = cross_validation.read_state(
                        options.artifacts_dir, options.resume if named else "last", unfinished=True
                    )
                    saved = resumed["options"]
                else:
                    *resumed, saved = locked_resumed_run(options.artifacts_dir, options.resume, lock)
                # A run continues with its own options: another value given now is refused.
                options = config.continued_options(
                    options, given, saved, RESUMED_OWN, own_names(RESUMED_OWN), resume.resumed_refusal
                )
        strategy, workers = devices.start(cluster, options.worker_wait)
        mode = "lr_find" if options.lr_find else "folds" if folds else "series" if len(names) > 1 else "one"
        plan = Plan(mode, options, given, strategy, workers, lock=lock.pop_all())
    if folds:
        plan.runs = fold_runs(*open_cross_validation(plan, names, resumed))
    elif len(names) > 1:
        plan.runs = series_runs(plan, names)
    else:
        plan.runs = iter([Planned(options, resumes=tuple(resumed) if resumed else None, locked=bool(resumed))])
    return plan


def locked_resumed_run(artifacts_dir, run_id, lock):
    """resume.open_resumed_run under the run's lock, entered into `lock`
    (an ExitStack): the run is chosen, locked, and only then are its state
    and options read and checked, so that two --resume of one run never
    both go on, and what is checked cannot change meanwhile. Raises
    UserError (naming the process that holds the run)."""
    stamp, folder, _ = resume.find_interrupted_run(artifacts_dir, run_id)
    lock.enter_context(run_lock.held(folder, "training", "--resume"))
    return resume.open_resumed_run(artifacts_dir, stamp)


def own_names(tags):
    """The names of main.py's options with any of `tags`."""
    return [name for tag in tags for name in config.names_tagged(tag)]


def series_runs(plan, names):
    """--backbone A,B,...: a run per backbone, one after another, each
    trained as if alone (its own seed, run folder and results) on the
    first run's split (scanned once, one --seed), so that the comparison
    scores them on the same test images."""
    options = plan.options
    widths = [name for name in names if backbones.BACKBONES[name]["alpha"]]
    if options.alpha != 1.0 and len(widths) < len(names):
        print(f"--alpha {options.alpha:g} applies to {', '.join(widths)}; the others have no width multiplier.")
    for number, backbone in enumerate(names, start=1):
        first = plan.trained[0] if plan.trained else None
        yield Planned(
            dataclasses.replace(options, backbone=backbone, alpha=backbones.backbone_alpha(backbone, options.alpha)),
            title=f"{backbone} ({number} of {len(names)})",
            index=first.index if first else None,
            shared_from=f"run {first.stamp}" if first else None,
        )


# ---------------------------------------------------------------- cross-validation's folds


def open_cross_validation(plan, names, state=None):
    """The cross-validation `plan` trains: a new one (its folds written),
    or the unfinished one --resume continues (`state`, its saved state; the
    plan's options are its own by now) with the same folds. Returns
    (CrossValidation, DatasetIndex). Raises UserError."""
    options = plan.options
    with console.stage("Scanning the dataset and making the folds"):
        if state:
            names = tuple(state["backbones"])
            print(f"Resuming cross-validation {state['id']} with its own options.")
        index = splits.index_source(config.picked(options, splits.Source), progress=audit.ProgressLine())
        fold_of, warnings = splits.assign_folds(index, options.folds, options.seed)
        if state:
            cv = cross_validation.CrossValidation(state["id"], options, names, fold_of, state["runs"])
            if not cv.same_folds(index):
                raise UserError(f"--resume: the dataset or folds differ from {cv.folds_path()}; "
                                "use the same --image_dir, --seed and split options")
        else:
            stamp = artifacts.new_run_stamp(
                options.results_dir, also_in=(os.path.join(options.artifacts_dir, cross_validation.FOLDER),)
            )
            cv = cross_validation.CrossValidation(
                stamp, options, tuple(names), fold_of, {name: [None] * options.folds for name in names}
            )
            cv.write_folds(index)
            print(f"Cross-validation {stamp}: {options.folds} folds x {len(names)} backbone(s), {cv.folder()}")
        for line in cross_validation.opening_lines(index, fold_of, warnings):
            print(f"    {line}")
    plan.cross_validation, plan.index = cv, index
    return cv, index


def duration(seconds):
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def fold_runs(cv, index):
    """Every fold of every backbone of `cv` not finished yet, as a Planned
    on its fold's split (continuing the fold's interrupted run, if any);
    after each, how long it took and about how long the rest will."""
    todo = [(name, fold) for name in cv.backbones for fold in range(cv.folds)]
    times = []
    for number, (name, fold) in enumerate(todo, start=1):
        folder = cv.run_folder(name, fold)
        progress = resume.read_progress(folder) if folder else None
        # A fold run published but killed before its last stage (its state
        # still says trained) is continued, not skipped.
        if folder and progress.status == "finished" and cross_validation.is_finished(folder):
            continue
        resumes = (cv.runs[name][fold], folder, progress.point) if progress and progress.point else None
        title = f"fold {fold + 1}/{cv.folds}" + (f" · {name}" if len(cv.backbones) > 1 else "")
        options = dataclasses.replace(cv.options, backbone=name, alpha=backbones.backbone_alpha(name, cv.options.alpha))
        start = time.perf_counter()
        yield Planned(options, title, index=splits.fold_index(index, cv.fold_of, fold),
                      shared_from="the cross-validation", resumes=resumes, fold=(name, fold))
        times.append(time.perf_counter() - start)
        left = len(todo) - number
        if left:
            print(f"\n{title} took {duration(times[-1])}; about {duration(np.median(times) * left)} "
                  f"left for the other {left} fold run(s)")


# ---------------------------------------------------------------- opening a run


def reserve(planned, cv=None):
    """(run id, folder, ResumePoint or None) of a planned run: the
    interrupted run it continues, or a new run folder. A fold's run is
    recorded in its cross-validation `cv` at once, so that --resume finds
    it."""
    if planned.resumes:
        stamp, folder, point = planned.resumes
    else:
        (stamp, folder), point = artifacts.new_run(planned.options.artifacts_dir, planned.options.results_dir), None
    if planned.fold:
        name, fold = planned.fold
        cv.runs[name][fold] = stamp
        cv.save()
    return stamp, folder, point


def after_training(options):
    """What a run resumed after its last epoch still does, in order."""
    return [*(["calibrating"] if options.calibrate else []), "publishing", "evaluating",
            *(["exporting"] if options.export else [])]


def announce(planned, stamp, folder, point):
    """A run's first lines: which run, where, and what --epochs means."""
    options = planned.options
    if planned.title:
        print(f"\n#### {planned.title} · run {stamp}: {folder}")
    if point and point.trained:
        print(f"Resuming run {stamp} ({folder}) after training: {', '.join(after_training(options))}.")
    elif point and not planned.title:
        print(f"Resuming run {stamp} ({folder}) with its own options.")
    elif options.lr_find:
        print(f"Learning-rate range test {stamp}: nothing is trained or published")
    elif not planned.title:
        print(f"Run {stamp}: {folder}")
    if not point and not options.lr_find:
        print("Training plan: " + train_utils.training_plan_line(
            options.epochs, options.patience, options.weights != "none", options.fine_tune_epochs,
            options.fine_tune_layers))
    if options.demo:
        print(f"No --image_dir given: training on the built-in demo ({options.image_dir}).")


def open_here(plan, planned, held):
    """Opens a planned run in this process (one machine, or the chief of
    several): reserved, locked until `held` (an ExitStack) closes, and
    announced; the other workers then learn its id, options and resume
    point. Returns (options, run id, folder, ResumePoint or None). Raises
    UserError, on every worker, when it cannot be opened."""
    stamp, folder, point = reserve(planned, plan.cross_validation)
    try:
        # A live run is never joined: its lock refuses a second process.
        if planned.locked:  # since plan_runs, before it read the run's state
            held.enter_context(plan.lock.pop_all())
        else:
            held.enter_context(run_lock.held(folder, "training", "--resume" if point else "main.py"))
    except UserError as error:
        if plan.workers is not None:
            plan.workers.exchange({"error": str(error)})
        raise
    announce(planned, stamp, folder, point)
    if plan.workers is not None:
        plan.workers.exchange({"stamp": stamp, "options": config.saved_options(planned.options),
                               "resume": None if point is None else point.to_json()})
    return planned.options, stamp, folder, point


def worker_refusal(name, ours, theirs):
    return (f"every worker trains with the chief's options, and the chief has {name}={theirs}; "
            f"give --{name} the same value here or leave it out. Received: {name}={ours}")


def worker_options(options, given, chief):
    """The options a worker other than the chief trains with: the chief's
    (`chief`, as saved in run_config.json), with the worker_local options
    given on this worker's command line (`given`). Any other option given
    with another value than the chief's is refused, naming it. Raises
    UserError."""
    own = ["resume", *(name for name in config.names_tagged("worker_local") if name in given)]
    return config.continued_options(options, given, chief, WORKER_OWN, own, worker_refusal)


def open_on_worker(plan):
    """A worker other than the chief learns the run from the chief (its id,
    options and resume point) and writes nothing in ARTIFACTS_DIR or
    RESULTS_DIR: its files (the saves every worker makes) go to a scratch
    folder of its own, deleted at the end. Returns (options, run id,
    folder, ResumePoint or None, scratch folder). Raises UserError."""
    cluster = plan.workers.cluster
    chief = plan.workers.exchange(None)[0]
    if "error" in chief:
        raise UserError(f"the chief stopped: {chief['error']}")
    options = worker_options(plan.options, plan.given, chief["options"])
    scratch = tempfile.mkdtemp(prefix=f"image-classifier-{cluster.task_type}{cluster.task_index}-")
    for name in ("artifacts_dir", "results_dir", "image_dir"):
        if artifacts.is_inside(scratch, getattr(options, name)):
            shutil.rmtree(scratch)
            raise UserError(
                f"this worker's scratch folder would be inside --{name}; set TMPDIR to a folder "
                f"outside it. Received: {name}={getattr(options, name)}"
            )
    stamp = chief["stamp"]
    options = dataclasses.replace(
        options, artifacts_dir=os.path.join(scratch, "model_artifacts"), results_dir=os.path.join(scratch, "results")
    )
    folder = os.path.join(artifacts.runs_folder(options.artifacts_dir), stamp)
    os.makedirs(folder)
    point = None
    if chief["resume"]:  # the chief's history stays the chief's
        point = resume.ResumePoint.from_json(chief["resume"])
        point = dataclasses.replace(
            point, history_path=os.path.join(options.results_dir, "training_curves", stamp, "history.csv")
        )
    print(
        f"Run {stamp}, {cluster.name} of {cluster.num_workers} workers: the chief writes the model "
        f"and results; this worker writes nothing there (scratch: {scratch})."
    )
    return options, stamp, folder, point, scratch


@contextlib.contextmanager
def opened(plan, planned):
    """The one way a run starts, in every mode: opened (`open_here`, or on
    a worker other than the chief `open_on_worker`), its device set up
    (devices.configure_device, with the run's own precision and XLA) and
    its machine chosen, seeded as if trained alone. Yields the Run. When
    the block fails, the model it was saving is removed, and a new run
    that kept no epoch with it (nothing to resume, no run left "training"
    forever); with several workers, all of them end together."""
    scratch = folder = point = options = stamp = None
    try:
        # The lock is released before a failed run is removed (its file is in the run folder).
        with devices.worker_errors(plan.workers and plan.workers.cluster), contextlib.ExitStack() as held:
            if plan.writes:
                options, stamp, folder, point = open_here(plan, planned, held)
            else:
                options, stamp, folder, point, scratch = open_on_worker(plan)
            device = devices.configure_device(options.precision, options.jit, plan.strategy, plan.workers)
            train_utils.seed_everything(options.seed, options.deterministic)
            run = Run(options, stamp, folder, device, train_utils.machine_for(device), point,
                      index=planned.index, shared_from=planned.shared_from, chosen_later=plan.mode != "one")
            yield run
            if plan.workers is not None:
                # Every worker waits for the chief's evaluation and figures,
                # so that none leaves while the others still count on it.
                with console.stage("Waiting for every worker to finish" if plan.writes else
                                   "Waiting for the chief to evaluate the model and write the results"):
                    plan.workers.exchange(None)
    except BaseException:
        if folder and artifacts.discard_failed_run(folder, new_run=point is None) and plan.writes:
            artifacts.discard_run_results(options.results_dir, stamp)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if plan.mode == "lr_find":
        # Nothing was trained: the run folder goes (unlocked by now), so no
        # run is left looking interrupted; its results stay under the stamp.
        artifacts.discard_failed_run(folder, new_run=True)
    plan.trained.append(run)
    if plan.mode != "one":  # only what a summary needs stays
        import keras

        run.model, run.best, run.datasets, run.evaluation = None, None, {}, None
        keras.backend.clear_session()


def check_same_split(run):
    """A resumed run trains on exactly the split it started with (its saved
    split manifest, the chief's on several workers); every worker on the
    split the chief found. Raises UserError, on every worker."""
    if run.point and run.device.is_chief:
        try:
            saved = artifacts.read_manifest(run.folder)
        except artifacts.CompanionError as error:
            raise UserError(f"--resume: {error}; start a new run") from None
        if saved != splits.manifest_rows(run.index):
            raise UserError(
                "--resume: the dataset or split differs from the interrupted run's "
                f"{run.artifact_path(artifacts.SPLIT_MANIFEST_FILE)}; use the same "
                "--image_dir, --seed and split options"
            )
    if run.device.workers is not None:
        rows = [dataclasses.astuple(row) for row in splits.manifest_rows(run.index)]
        digests = run.device.workers.exchange(hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest())
        differ = [str(number) for number, theirs in enumerate(digests) if theirs != digests[0]]
        if differ:
            raise UserError(
                f"the workers found different datasets: worker(s) {', '.join(differ)} (in TF_CONFIG order, "
                "chief first) split their files differently from the chief; every worker needs the same "
                "files under --image_dir and the same --seed, split, --classes and --labels_csv options"
            )


# ---------------------------------------------------------------- after the runs


def finish(plan):
    """What the mode asks once its runs are trained: one run's closing
    summary; a series' published run and comparison; the folds' scores,
    summary and published fold run. Returns the run, the runs, or the
    CrossValidation."""
    if plan.mode == "series":
        return finish_series(plan)
    if plan.mode == "folds":
        return finish_folds(plan)
    (run,) = plan.trained
    if plan.mode == "lr_find":
        console.summary([*run.finding.lines()[1:], *(f"curve: {path}" for path in run.drawn),
                         f"to train with it: {command_with_rate(plan.given, run.finding.rate)}",
                         "or let every run find its own: --learning_rate auto"])
        return run
    if plan.writes:
        console.summary(report.training_summary(run))
    return run


def command_with_rate(given, rate):
    """The main.py command of the options `given` (config.given_options)
    without --lr_find, with --learning_rate `rate`."""
    parts = ["python main.py"]
    for name in config.options_of("main"):
        if name not in given or name in ("lr_find", "learning_rate"):
            continue
        value = given[name]
        if isinstance(value, bool):
            parts.append(f"--{name}")
        else:
            parts += [f"--{name}", shlex.quote(str(config.shown(value)))]
    return " ".join([*parts, "--learning_rate", f"{rate:.3g}"])


def publish_best(options, runs):
    """Chooses the run whose best epoch had the lowest val_loss, by the
    validation split only, never the test images the comparison reports,
    and publishes it as --publish says (publishing.decide: with auto,
    unless it scores worse than the model published before the series;
    with always each run was also published as it finished, so an
    interrupted series leaves the last finished one). Returns its run id."""

    def best_val_loss(run):
        value = (artifacts.read_run_config(run.folder).get("training") or {}).get("best_val_loss")
        return float("inf") if value is None else value

    best = min(runs, key=best_val_loss)
    print(f"    chosen: run {best.stamp} ({best.options.backbone}, val_loss {best_val_loss(best):.4f}; "
          "the others stay in their run folders)")
    decision = publishing.decide(options.publish, options.artifacts_dir, best.folder, best.index.root,
                                 options.batch_size, best.index.readers)
    for line in decision.lines:
        print(f"    {line}")
    return best.stamp


def finish_series(plan):
    """The run with the lowest validation loss published, then every run
    scored on the same test images (compare.compare_runs)."""
    options, runs = plan.options, plan.trained
    with console.stage("Publishing the run with the lowest validation loss"):
        publish_best(options, runs)
    with console.stage(f"Comparing the {len(runs)} models on the same test images"):
        _, _, paths = compare.compare_runs(
            [run.folder for run in runs], options.image_dir, options.results_dir,
            options.batch_size, readers=runs[0].index.readers,
            published=artifacts.published_run(options.artifacts_dir),
        )
    with console.stage("Showing the comparison"):
        figures.show_figures(paths[-1:], options.show)
    return runs


def finish_folds(plan):
    """Every fold's model scored on its validation fold and the test split,
    the summary written (cross_validation.write_summary) and the fold run
    chosen on validation data published as --publish says; the
    cross-validation finished."""
    cv, index = plan.cross_validation, plan.index
    with console.stage("Scoring every fold's model on its validation fold and the test split"):
        scored = cross_validation.fold_evaluations(cv, index, cv.options.batch_size)
    with console.stage("Writing the cross-validation summary"):
        drawn, chosen, lines = cross_validation.write_summary(cv, index, scored, cv.results_folder())
        decision = publishing.decide(cv.options.publish, cv.options.artifacts_dir,
                                     os.path.join(artifacts.runs_folder(cv.options.artifacts_dir), chosen),
                                     index.root, cv.options.batch_size, index.readers)
        cv.status = "finished"
        cv.save()
        for line in (*lines, *decision.lines):
            print(f"    {line}")
    figures.show_figures(drawn[:1], cv.options.show)
    return cv
