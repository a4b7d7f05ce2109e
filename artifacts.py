"""The model folder: what is saved beside a model, runs, and safe writes.

A trained model is one `.keras` file plus its companions, which together
are everything evaluate.py and predict.py need to use it again:

    best_model.keras      the model; takes uint8 RGB 0-255 images
    class_index.json      output index -> class name
    run_config.json       image size, backbone, options, versions, the run
                          id and the model file's sha256
    split_manifest.csv    path (relative to the dataset), class, split

and, once the run's test split is evaluated, test_reliability.json (its
reliability bins and scores: how far one prediction can be trusted).

Every training run writes into its own folder, ARTIFACTS_DIR/runs/<run>/,
created atomically so two runs never share one (`new_run`). Only a run
that finished training is published (`publish`): ARTIFACTS_DIR/latest is a
link to its folder, replaced in one atomic step, and ARTIFACTS_DIR/
best_model.keras and its companions are fixed links through `latest`. So
the path users know always shows one finished run's model with that same
run's companions, and a run that fails or is killed changes nothing there.

The names live here and nowhere else; `write_companions` writes the
companions and `read_class_names`, `read_run_config` and `read_manifest`
(the one reader of the manifest) read them back. Every file the project
writes goes through `atomic_write` (a temporary sibling, then os.replace),
so a crash never leaves a truncated file.
"""

import csv
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time

import safe_text

MODEL_FILE = "best_model.keras"
CLASS_INDEX_FILE = "class_index.json"
RUN_CONFIG_FILE = "run_config.json"
SPLIT_MANIFEST_FILE = "split_manifest.csv"
COMPANION_FILES = (CLASS_INDEX_FILE, RUN_CONFIG_FILE, SPLIT_MANIFEST_FILE)
# Written beside the model by the run's test evaluation (main.py, or
# evaluate.py for a run that has none): the test split's reliability bins
# (each bin's images, mean confidence and accuracy), from which app.py and
# predict.py say how far one prediction can be trusted, and the scores of
# the same evaluation for the model card. Not a companion: a run trained
# before it existed is still usable, without trust sentences.
TEST_RELIABILITY_FILE = "test_reliability.json"
# Beside the companions: the content hash (sha256) and perceptual hashes of
# every image the run trained or validated on, so evaluate.py can tell a
# copy of one in another folder (see splits.seen_images).
SEEN_IMAGES_FILE = "seen_images.json"
# In ARTIFACTS_DIR: one folder per training run, the link to the last
# finished one, and the audit's cache (see audit.py). In a run folder: the
# resume points of an interrupted run (see train_utils).
RUNS_FOLDER = "runs"
LATEST_LINK = "latest"
AUDIT_CACHE_FOLDER = "audit_cache"
RESUME_FOLDER = "resume"
# Reserved result stamps, so that two invocations never share one.
STAMPS_FOLDER = ".stamps"
MANIFEST_HEADER = ("path", "class", "split")
GROUP_COLUMN = "group"  # with --group_by: each image's group, a fourth column


# ---------------------------------------------------------------- writing files


# Temporary siblings are named .<base>.<8 characters>.tmp<ext>, as
# tempfile.mkstemp named them before; one left by a killed process is
# removed by a later write to the same folder once it is this old (a save
# in progress rewrites its file far more often than that).
TEMP_NAME = re.compile(r"\A\..*\.[a-z0-9_]{8}\.tmp(\.[^.]*)?\Z")
TEMP_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"
STALE_TEMP_SECONDS = 30 * 60


def _new_temp_file(folder, base, extension):
    """Creates an empty temporary sibling and returns its path. Created by
    os.open with mode 0666, so the umask applies as for open(): mkstemp's
    0600 would hide results from the other users of a shared machine."""
    for _ in range(100):
        token = "".join(secrets.choice(TEMP_NAME_CHARACTERS) for _ in range(8))
        path = os.path.join(folder, f".{base}.{token}.tmp{extension}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary file name in {folder}")


def remove_stale_temp_files(folder, max_age=STALE_TEMP_SECONDS, now=None):
    """Removes the temporary files atomic_write left in `folder` when a
    process was killed mid-save: regular files named as ours (TEMP_NAME),
    unchanged for `max_age` seconds. Nothing else is touched. Returns the
    names removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if (
                TEMP_NAME.match(entry.name)
                and entry.is_file(follow_symlinks=False)
                and now - entry.stat(follow_symlinks=False).st_mtime > max_age
            ):
                os.remove(entry.path)
                removed.append(entry.name)
        except OSError:  # removed meanwhile by another process, or not ours to remove
            continue
    return removed


def atomic_write(path, write):
    """Writes a file via a temporary sibling and os.replace, so a crash
    never leaves a truncated file. `write(temp_path)` does the writing. The
    file gets the mode open() would give it (0666 less the umask), and
    temporary files that killed processes left in the folder are removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(folder)
    base, extension = os.path.splitext(os.path.basename(path))
    temp_path = _new_temp_file(folder, base, extension)
    try:
        write(temp_path)
        os.replace(temp_path, path)
    except OSError as error:
        if error.filename is None and error.errno is not None:  # a library's write: name the file
            raise OSError(error.errno, error.strerror, path) from error
        raise
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)
    return path


def write_json(path, data):
    """`data` as indented UTF-8 JSON, atomically; returns the path."""

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")

    return atomic_write(path, write)


def write_csv(path, rows):
    """Rows (header first) as a CSV file, atomically; returns the path.
    A text cell a spreadsheet would run as a formula (a class named
    "=cmd|..." ) is written with a leading quote (safe_text.csv_cell);
    read_csv gives the text back exactly."""

    def write(temp_path):
        with open(temp_path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([safe_text.csv_cell(cell) for cell in row] for row in rows)

    return atomic_write(path, write)


def read_csv(path):
    """The rows of a CSV file write_csv wrote, each cell the text it was
    given (safe_text.csv_text undoes the formula guard). Raises OSError,
    UnicodeDecodeError."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [[safe_text.csv_text(cell) for cell in row] for row in csv.reader(handle)]


def write_text(path, text):
    """A UTF-8 text file, atomically; returns the path."""

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def staging_path(path):
    """The file a model is saved to before it replaces `path` in one step
    (train_utils' checkpoint writes it, then promotes it)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{os.path.splitext(name)[0]}.saving.keras")


def discard_failed_run(folder, new_run):
    """After a run in `folder` stopped on an error or Ctrl-C: the model it
    was saving when it stopped (half-written) is removed, and a `new_run`
    that completed no epoch (nothing to resume) is removed with the files
    it wrote, so no run stays "training" forever. Only our own names are
    removed, and the folder only once it is empty. Returns whether the
    folder is gone."""
    names = [staging_path(MODEL_FILE)]
    if new_run and not os.path.exists(os.path.join(folder, RESUME_FOLDER, "state.json")):
        names += [MODEL_FILE, TEST_RELIABILITY_FILE, *COMPANION_FILES, RESUME_FOLDER, ""]
    for name in names:
        path = os.path.join(folder, name)
        try:
            os.rmdir(path) if os.path.isdir(path) else os.remove(path)
        except OSError:  # not there, not empty, or not ours to remove
            continue
    return not os.path.lexists(folder)


def discard_run_results(results_dir, stamp):
    """What a failed run whose folder discard_failed_run removed wrote under
    RESULTS_DIR/<category>/<stamp> (its audit, its first figures): removed
    too, so that no result names a run that no longer exists. Only folders
    named by this run's own stamp; its reservation in .stamps stays, so the
    stamp is never given again."""
    try:
        categories = [entry.path for entry in os.scandir(results_dir)
                      if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")]
    except OSError:
        return
    for category in categories:
        path = os.path.join(category, stamp)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def save_model(model, path):
    """Saves a .keras file atomically."""
    return atomic_write(path, lambda temp_path: model.save(temp_path))


def _new_temp_folder(parent, name):
    """An empty temporary folder in `parent`, made by os.mkdir with mode
    0777 so the umask applies, as for the files (mkdtemp's 0700 would
    hide a SavedModel from the other users of a shared machine)."""
    for _ in range(100):
        token = "".join(secrets.choice(TEMP_NAME_CHARACTERS) for _ in range(8))
        folder = os.path.join(parent, f".{name}.{token}.tmp")
        try:
            os.mkdir(folder, 0o777)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free temporary folder name in {parent}")


def atomic_write_folder(path, write):
    """Writes a folder (a SavedModel) via a temporary sibling folder, then
    swaps it in, so `path` is never a half-written folder. `write(temp_path)`
    fills the empty folder temp_path. An earlier folder at `path` is
    replaced."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(path))
    staging = _new_temp_folder(parent, name)
    old = None
    try:
        write(staging)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, name))
        os.replace(staging, path)
    finally:
        for leftover in (staging, old):
            if leftover and os.path.exists(leftover):
                shutil.rmtree(leftover)
    return path


def new_run_stamp(results_dir, now=None, also_in=()):
    """A timestamp (20261121-142530) for one command invocation, unique: a
    suffix (-2, -3, ...) is added while any results category already has
    that name, and the stamp is reserved atomically (os.mkdir of
    RESULTS_DIR/.stamps/<stamp>), so two invocations started in the same
    second never share one. `also_in`: folders in which <stamp> must be
    created too, atomically (a training run's folder); the first stamp free
    everywhere wins. Returns the stamp."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    reservations = os.path.join(results_dir, STAMPS_FOLDER)
    os.makedirs(reservations, exist_ok=True)
    for parent in also_in:
        os.makedirs(parent, exist_ok=True)
    categories = [entry.path for entry in os.scandir(results_dir) if entry.is_dir()]
    number = 1
    while True:
        candidate = stamp if number == 1 else f"{stamp}-{number}"
        number += 1
        if any(os.path.exists(os.path.join(folder, candidate)) for folder in categories):
            continue
        try:
            os.mkdir(os.path.join(reservations, candidate))
        except FileExistsError:
            continue
        try:
            for position, parent in enumerate(also_in):
                os.mkdir(os.path.join(parent, candidate))
        except FileExistsError:
            for parent in also_in[:position]:
                os.rmdir(os.path.join(parent, candidate))  # empty: made just above
            continue
        return candidate


def is_inside(path, folder):
    """Whether `path` is `folder` or inside it, links resolved (realpath +
    commonpath, never string prefixes: /data2 is not inside /data)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


# ---------------------------------------------------------------- the model folder


def audit_cache_dir(artifacts_dir):
    """Where the audit keeps its cache: with the artifacts, never inside a
    dataset."""
    return os.path.join(artifacts_dir, AUDIT_CACHE_FOLDER)


def model_path(artifacts_dir, model=None):
    """The model file a script reads or writes: `model` when given, else
    ARTIFACTS_DIR/best_model.keras."""
    return model or os.path.join(artifacts_dir, MODEL_FILE)


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One image of a saved split: path relative to the dataset, class,
    split, and its group with --group_by ("" without)."""

    path: str
    label: str
    split: str
    group: str = ""


def write_companions(folder, class_names, manifest, run_config):
    """Writes class_index.json, split_manifest.csv and run_config.json into
    `folder`. `manifest` is a list of ManifestRows; returns the folder."""
    grouped = any(row.group for row in manifest)
    write_csv(
        os.path.join(folder, SPLIT_MANIFEST_FILE),
        [MANIFEST_HEADER + ((GROUP_COLUMN,) if grouped else ())]
        + [(row.path, row.label, row.split) + ((row.group,) if grouped else ()) for row in manifest],
    )
    write_json(
        os.path.join(folder, CLASS_INDEX_FILE),
        {str(number): name for number, name in enumerate(class_names)},
    )
    write_json(os.path.join(folder, RUN_CONFIG_FILE), run_config)
    return folder


def companions_folder(model_file):
    """The folder of a model's companions: the model's own folder, links
    resolved (ARTIFACTS_DIR/best_model.keras leads to the run folder it
    was published from), never any other folder."""
    return os.path.dirname(os.path.realpath(model_file))


class CompanionError(ValueError):
    """A companion file that cannot be used (missing, not JSON, wrong
    shape): the caller reports it as one line."""


def _read_companion_json(folder, name, kind):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise CompanionError(f"no {name} beside the model in {folder}")
    try:
        data = read_json(path)
    except (OSError, ValueError) as error:
        raise CompanionError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(data, kind):
        raise CompanionError(f"{path} must hold a JSON {kind.__name__}, not a {type(data).__name__}")
    return data


def read_class_names(folder):
    """The class names of class_index.json in `folder`, in output order.
    Raises CompanionError unless it maps "0".."N-1" to names."""
    class_index = _read_companion_json(folder, CLASS_INDEX_FILE, dict)
    numbers = [str(number) for number in range(len(class_index))]
    if sorted(class_index) != sorted(numbers) or not all(
        isinstance(class_index[number], str) and class_index[number] for number in numbers
    ):
        raise CompanionError(
            f"{os.path.join(folder, CLASS_INDEX_FILE)} must map 0..{len(class_index) - 1} "
            "to class names, with no gap"
        )
    return tuple(class_index[number] for number in numbers)


def read_run_config(folder):
    """run_config.json in `folder` as a dict. Raises CompanionError."""
    return _read_companion_json(folder, RUN_CONFIG_FILE, dict)


def run_config_or_empty(folder):
    """run_config.json in `folder`, or {} when it is missing or unreadable
    (a run whose status is then unknown: never finished, never compared)."""
    try:
        return read_run_config(folder)
    except CompanionError:
        return {}


def read_test_reliability(folder):
    """test_reliability.json in `folder` as a dict, or None when the run
    has none. Raises CompanionError when it is not readable JSON or holds
    no list of bins."""
    if not os.path.isfile(os.path.join(folder, TEST_RELIABILITY_FILE)):
        return None
    saved = _read_companion_json(folder, TEST_RELIABILITY_FILE, dict)
    if not isinstance(saved.get("bins"), list) or not all(isinstance(row, dict) for row in saved["bins"]):
        raise CompanionError(f"{os.path.join(folder, TEST_RELIABILITY_FILE)} holds no list of reliability bins")
    return saved


def read_seen_images(folder):
    """The run's SEEN_IMAGES_FILE ({"sha256": [...], "phash": [...]}), or
    None when it has none (a run from before it was kept). Raises
    CompanionError when it cannot be read."""
    path = os.path.join(folder, SEEN_IMAGES_FILE)
    if not os.path.isfile(path):
        return None
    seen = _read_companion_json(folder, SEEN_IMAGES_FILE, dict)
    if not all(isinstance(seen.get(key), list) for key in ("sha256", "phash")):
        raise CompanionError(f"{path}: expected lists sha256 and phash")
    return seen


def has_manifest(folder):
    return os.path.isfile(os.path.join(folder, SPLIT_MANIFEST_FILE))


def read_manifest(folder):
    """split_manifest.csv in `folder` as a list of ManifestRows. Raises
    CompanionError when it is missing or not a manifest."""
    path = os.path.join(folder, SPLIT_MANIFEST_FILE)
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError) as error:
        raise CompanionError(f"cannot read {path} ({error})") from None
    width = len(rows[0]) if rows else 0
    headers = (MANIFEST_HEADER, MANIFEST_HEADER + (GROUP_COLUMN,))
    if not rows or tuple(rows[0]) not in headers or any(len(row) != width for row in rows[1:] if row):
        raise CompanionError(f"{path} is not a split manifest (path,class,split[,group] rows)")
    return [ManifestRow(*row) for row in rows[1:] if row]


def file_sha256(path):
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- runs


def runs_folder(artifacts_dir):
    return os.path.join(artifacts_dir, RUNS_FOLDER)


def new_run(artifacts_dir, results_dir, now=None):
    """Creates a new run's folder, ARTIFACTS_DIR/runs/<run>/, atomically:
    the run id is also the results stamp (RESULTS_DIR/<category>/<run>/).
    Returns (run id, run folder)."""
    parent = runs_folder(artifacts_dir)
    run_id = new_run_stamp(results_dir, now=now, also_in=(parent,))
    return run_id, os.path.join(parent, run_id)


def run_ids(artifacts_dir):
    """The ids of the runs in ARTIFACTS_DIR, oldest first."""
    parent = runs_folder(artifacts_dir)
    if not os.path.isdir(parent):
        return []
    return sorted(entry.name for entry in os.scandir(parent) if entry.is_dir())


def is_finished(folder, saved):
    """Whether the run in `folder`, whose run config is `saved`, finished
    training: its run config says so and its best_model.keras is there."""
    return saved.get("status") == "finished" and os.path.isfile(os.path.join(folder, MODEL_FILE))


def finished_runs(artifacts_dir):
    """[(run id, run config)] of the runs in ARTIFACTS_DIR that finished
    training (`is_finished`), oldest first; a run whose run config cannot be read is left out."""
    finished = []
    for run_id in run_ids(artifacts_dir):
        folder = os.path.join(runs_folder(artifacts_dir), run_id)
        try:
            saved = read_run_config(folder)
        except CompanionError:
            continue
        if is_finished(folder, saved):
            finished.append((run_id, saved))
    return finished


def published_run(artifacts_dir):
    """The id of the run ARTIFACTS_DIR/latest points at, or None."""
    link = os.path.join(artifacts_dir, LATEST_LINK)
    if not os.path.islink(link):
        return None
    return os.path.basename(os.path.normpath(os.readlink(link)))


def _replace_link(target, path):
    """Points the link `path` at `target` in one atomic step (a new link
    beside it, then os.replace, which renames the link itself)."""
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    if os.path.lexists(temp):
        os.remove(temp)
    os.symlink(target, temp)
    os.replace(temp, path)


def check_publishable(artifacts_dir):
    """Raises CompanionError when publishing would replace a file that is
    not one of publish's links (a model or companion someone put directly
    in ARTIFACTS_DIR): it is never overwritten."""
    for name in (LATEST_LINK, MODEL_FILE, *COMPANION_FILES):
        path = os.path.join(artifacts_dir, name)
        if os.path.lexists(path) and not os.path.islink(path):
            raise CompanionError(
                f"{path} is not a link made by publishing a run, and publishing would replace it: "
                "move it away (or use another --artifacts_dir)"
            )


def publish(artifacts_dir, run_folder):
    """Makes a finished run's model what evaluate.py and predict.py use by
    default: ARTIFACTS_DIR/latest -> runs/<run>, switched atomically, and
    ARTIFACTS_DIR/<model and companions> -> latest/<same name>. Returns the
    published model path."""
    check_publishable(artifacts_dir)
    relative = os.path.relpath(os.path.abspath(run_folder), os.path.abspath(artifacts_dir))
    _replace_link(relative, os.path.join(artifacts_dir, LATEST_LINK))
    for name in (MODEL_FILE, *COMPANION_FILES):
        path = os.path.join(artifacts_dir, name)
        if os.path.islink(path) and os.readlink(path) == os.path.join(LATEST_LINK, name):
            continue
        _replace_link(os.path.join(LATEST_LINK, name), path)
    return os.path.join(artifacts_dir, MODEL_FILE)

