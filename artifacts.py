"""The model folder: what is saved beside a model, and safe file writes.

A trained model is one `.keras` file plus its companions, which together
are everything evaluate.py and predict.py need to use it again:

    best_model.keras      the model; takes uint8 RGB 0-255 images
    class_index.json      output index -> class name
    run_config.json       image size, backbone, options, versions, ...
    split_manifest.csv    path (relative to the dataset), class, split

The names live here and nowhere else; `write_companions` writes them and
`read_class_names`, `read_run_config` and `read_manifest` (the one reader
of the manifest) read them back. Every file the project writes goes
through `atomic_write` (a temporary sibling, then os.replace), so a crash
never leaves a truncated file.
"""

import csv
import dataclasses
import json
import os
import re
import secrets
import time

MODEL_FILE = "best_model.keras"
CLASS_INDEX_FILE = "class_index.json"
RUN_CONFIG_FILE = "run_config.json"
SPLIT_MANIFEST_FILE = "split_manifest.csv"
# Resume points of an interrupted run (see train_utils) and the audit's
# cache (see audit.py) live in these subfolders of the artifacts folder.
RESUME_FOLDER = "resume"
AUDIT_CACHE_FOLDER = "audit_cache"
MANIFEST_HEADER = ("path", "class", "split")


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
    """Rows (header first) as a CSV file, atomically; returns the path."""

    def write(temp_path):
        with open(temp_path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)

    return atomic_write(path, write)


def write_text(path, text):
    """A UTF-8 text file, atomically; returns the path."""

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write)


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_model(model, path):
    """Saves a .keras file atomically."""
    return atomic_write(path, lambda temp_path: model.save(temp_path))


def new_run_stamp(results_dir, now=None):
    """A timestamp (20261121-142530) for one command invocation, with a
    suffix (-2, -3, ...) if any results category already has that name, so
    an earlier run is never overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    categories = (
        [entry.path for entry in os.scandir(results_dir) if entry.is_dir()]
        if os.path.isdir(results_dir)
        else []
    )
    candidate, number = stamp, 1
    while any(os.path.exists(os.path.join(folder, candidate)) for folder in categories):
        number += 1
        candidate = f"{stamp}-{number}"
    return candidate


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
    """One image of a saved split: path relative to the dataset, class, split."""

    path: str
    label: str
    split: str


def write_companions(folder, class_names, manifest, run_config):
    """Writes class_index.json, split_manifest.csv and run_config.json into
    `folder`. `manifest` is a list of ManifestRows; returns the folder."""
    write_csv(
        os.path.join(folder, SPLIT_MANIFEST_FILE),
        [MANIFEST_HEADER] + [(row.path, row.label, row.split) for row in manifest],
    )
    write_json(
        os.path.join(folder, CLASS_INDEX_FILE),
        {str(number): name for number, name in enumerate(class_names)},
    )
    write_json(os.path.join(folder, RUN_CONFIG_FILE), run_config)
    return folder


def companions_folder(model_file, artifacts_dir):
    """The folder holding the model's class_index.json: ARTIFACTS_DIR, or
    the model's own folder when the model was moved with its files. Returns
    None when neither has one."""
    for folder in (artifacts_dir, os.path.dirname(os.path.abspath(model_file))):
        if os.path.isfile(os.path.join(folder, CLASS_INDEX_FILE)):
            return folder
    return None


def read_class_names(folder):
    """The class names of class_index.json in `folder`, in output order."""
    class_index = read_json(os.path.join(folder, CLASS_INDEX_FILE))
    return tuple(class_index[str(number)] for number in range(len(class_index)))


def read_run_config(folder):
    """run_config.json in `folder` as a dict ({} when there is none)."""
    path = os.path.join(folder, RUN_CONFIG_FILE)
    return read_json(path) if os.path.isfile(path) else {}


def has_manifest(folder):
    return os.path.isfile(os.path.join(folder, SPLIT_MANIFEST_FILE))


def read_manifest(folder):
    """split_manifest.csv in `folder` as a list of ManifestRows."""
    with open(os.path.join(folder, SPLIT_MANIFEST_FILE), newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return [ManifestRow(*row) for row in rows[1:] if row]
