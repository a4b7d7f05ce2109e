"""The audit: is every candidate file really a usable image?

Before anything trains, every file is checked once, in parallel
(`audit_files`): its format is read from its content, not its extension;
decompression bombs are refused from the header; and the file is decoded
fully with the decoder training will use, so a file that passes cannot stop
training mid-epoch. Results are cached per dataset (keyed by each file's
path, size and modification time) in a folder outside the dataset.

Also here: what a skipped file looks like (`SkippedFile`), the progress
line of a long audit, and the audit's report (`audit.json`) and printed
summary.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import sys
import time
import warnings

import numpy as np

import artifacts
import image_io
import near_duplicates
import safe_text

AUDIT_CACHE_VERSION = 2  # 2: each file's perceptual hashes
# How much of a file decides what it is: format signatures (DICOM's sits
# at byte 128) and the text/HTML test.
HEADER_BYTES = 512
IGNORED_KINDS = {
    "hidden": "hidden",
    "os_junk": "OS junk",
    "other_extension": "not an image extension",
    "outside_class_folder": "outside any class folder",
    "other_folder": "folder that is not train/val/test",
    "not_in_classes": "class not in --classes",
    "not_regular_file": "not a regular file (FIFO, socket, device)",
}


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file left out, and why: the one form of a skipped file, from the
    scan (a labels CSV row pointing nowhere), the audit (not an image,
    truncated, too large) or prediction (unreadable). `label` is its class
    when one is known."""

    path: str
    reason: str
    label: str | None = None

    def __str__(self):
        return f"{self.path} ({self.reason})"


# ---------------------------------------------------------------- one file


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """The audit of one file: usable, or skipped with a reason."""

    path: str
    usable: bool
    reason: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    decoder: str = ""
    decoder_note: str = ""  # why a file is decoded in Python
    sha256: str = ""
    phash: str = ""  # near_duplicates.to_text of its perceptual hashes


NOT_UTF8 = "file name is not valid UTF-8: rename the file to use it"


def is_utf8(path):
    """Whether a path can be passed to TensorFlow, which takes UTF-8 file
    names (os.listdir gives other bytes as surrogate characters)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _skip(path, reason, **details):
    return FileCheck(path=path, usable=False, reason=reason, **details)


def _native_decode(data):
    """(pixels, None) if TensorFlow decodes the bytes, else (None, its error
    message)."""
    import tensorflow as tf

    try:
        return image_io.decode_native(data).numpy(), None
    except (
        tf.errors.InvalidArgumentError,
        tf.errors.OutOfRangeError,
        tf.errors.UnknownError,
    ) as error:
        return None, image_io.error_text(error)


def _hashes(pixels):
    """The perceptual hashes of decoded pixels, as FileCheck keeps them: the
    pixels the audit decoded anyway, so a near-copy costs no second read."""
    return near_duplicates.to_text(near_duplicates.image_hashes(pixels))


def _check_with_reader(relpath, path, extension, function, digest):
    name = image_io.describe_reader(function)
    try:
        array = image_io.as_rgb_uint8(function(path), f"reader {name}")
    except Exception as error:  # the user's reader on the user's file
        return _skip(
            relpath,
            f"reader failed ({name}): {type(error).__name__}: {image_io.error_text(error)}",
            decoder=extension,
        )
    return FileCheck(
        path=relpath,
        usable=True,
        format=extension.lstrip(".").upper(),
        mode=f"{array.shape[2]}ch",
        width=int(array.shape[1]),
        height=int(array.shape[0]),
        decoder=extension,
        decoder_note=f"{extension} reader",
        sha256=digest,
        phash=_hashes(array),
    )


def _open_failure(relpath, kind, name, error):
    """The skip of a file Pillow cannot open, from what its first bytes said."""
    if kind is None:
        return _skip(relpath, "not an image: unrecognised content")
    if not image_io.pillow_can_open(name):
        return _skip(
            relpath,
            f"unreadable format: {name} (no decoder installed; convert the file "
            "to JPEG or PNG, or register a reader with --reader)",
            format=name,
        )
    return _skip(relpath, f"truncated or corrupt {name}: {image_io.error_text(error)}", format=name)


def _open_checked(relpath, head, source):
    """Opens an image's header with Pillow once its first bytes `head`
    allow it: (image, None), or (None, the FileCheck of a file ruled out
    before its pixels are read: not an image, unknown content, a format
    nothing decodes, a decompression bomb)."""
    kind, name = image_io.sniff_format(head)
    if kind == "other":
        return None, _skip(relpath, f"not an image: {name}")
    try:
        return image_io.open_image(source), None
    except image_io.TooLargeError as error:
        return None, _skip(relpath, str(error), format=name or "")
    except Exception as error:  # Pillow on untrusted bytes raises many types
        return None, _open_failure(relpath, kind, name, error)


def _check_image(relpath, data, digest):
    """Audits the bytes of a file that has no custom reader."""
    image, refused = _open_checked(relpath, data[:HEADER_BYTES], io.BytesIO(data))
    if refused:
        return refused
    width, height = image.size
    if image_io.header_orientation(image) in (5, 6, 7, 8):  # stored on its side
        width, height = height, width
    details = dict(format=image.format, mode=image.mode, width=width, height=height, sha256=digest)
    decoder, note = image_io.choose_decoder(image, data[:64])
    if decoder == "native":
        # The audit runs the decoder training will run, so a file that
        # passes cannot fail mid-epoch (keras-team/keras#19508).
        pixels, native_error = _native_decode(data)
        if native_error is None:
            return FileCheck(path=relpath, usable=True, decoder=decoder, phash=_hashes(pixels), **details)
        _, pillow_error = _pillow_decode(image)
        detail = (
            pillow_error or f"{native_error} (TensorFlow refuses it; re-saving the file fixes it)"
        )
        return _skip(
            relpath, f"truncated or corrupt {image.format}: {detail}", decoder=decoder, **details
        )
    pixels, pillow_error = _pillow_decode(image)
    if pillow_error:
        return _skip(
            relpath,
            f"truncated or corrupt {image.format}: {pillow_error}",
            decoder=decoder,
            **details,
        )
    return FileCheck(
        path=relpath, usable=True, decoder=decoder, decoder_note=note, phash=_hashes(pixels), **details
    )


def _pillow_decode(image):
    """(pixels, None), or (None, Pillow's error message)."""
    try:
        return image_io.decode_with_pillow(image), None
    except Exception as error:  # Pillow on untrusted bytes raises many types
        return None, image_io.error_text(error)


def _sha256(handle):
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def check_file(root, relpath, readers=None):
    """Audits one file (`relpath` under `root`): only a regular file is
    opened (a FIFO would block forever); its format is detected from its
    first bytes and decompression bombs are refused from its header before
    the rest is read (a 3 GB file that is no image is never loaded); then
    it is read once and decoded fully with the decoder training will use.
    Returns a FileCheck; problems with the file never raise."""
    readers = image_io.normalize_readers(readers)
    if not is_utf8(relpath):
        return _skip(image_io.display_path(relpath), NOT_UTF8)
    path = os.path.join(root, relpath)
    extension = image_io.file_extension(relpath)
    try:
        with image_io.open_regular_file(path) as handle:
            if not os.fstat(handle.fileno()).st_size:
                return _skip(relpath, "empty file (0 bytes)")
            if extension in readers:
                digest = _sha256(handle)
                return _check_with_reader(relpath, path, extension, readers[extension], digest)
            # The header first, from the open file: what it rules out is
            # never read whole.
            head = handle.read(HEADER_BYTES)
            handle.seek(0)
            _, refused = _open_checked(relpath, head, handle)
            if refused:
                return refused
            handle.seek(0)
            data = handle.read()
    except image_io.NotRegularFileError as error:
        return _skip(relpath, f"{error}: only regular files are read")
    except OSError as error:
        return _skip(relpath, f"cannot read the file: {error.strerror or error}")
    return _check_image(relpath, data, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------- every file, cached


def _package_version(name):
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cache_signature(readers):
    """What cached results depend on besides each file: if any of it
    changes, every file is checked again."""
    import PIL
    from PIL import Image

    described = {}
    for extension, function in sorted(readers.items()):
        name = image_io.describe_reader(function)
        source = name.rpartition(":")[0]
        described[extension] = [
            name,
            os.stat(source).st_mtime_ns if os.path.isfile(source) else None,
        ]
    return {
        "version": AUDIT_CACHE_VERSION,
        "pillow": PIL.__version__,
        "tensorflow": _package_version("tensorflow"),
        "max_image_pixels": Image.MAX_IMAGE_PIXELS,
        "readers": described,
    }


def audit_cache_path(cache_dir, root):
    """The cache file of one dataset folder inside `cache_dir`."""
    key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir, f"{key}.json")


def _load_cache(path, signature):
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):  # a damaged cache is just rebuilt
        return {}
    return data.get("files", {}) if data.get("signature") == signature else {}


def _save_cache(path, root, signature, entries):
    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            json.dump({"image_dir": root, "signature": signature, "files": entries}, handle)

    artifacts.atomic_write(path, write)


def _file_key(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _check_all(root, todo, readers, workers, progress):
    """check_file over `todo` in a thread pool (decoders release the GIL)."""
    results = {}
    if not todo:
        return results
    if any(image_io.file_extension(path) not in readers for path in todo):
        import tensorflow  # noqa: F401  imported here, not in a worker thread
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    # Pillow warns about images between 1x and 2x its pixel limit before we
    # refuse them with a reason; the warning would only repeat that reason.
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(check_file, root, path, readers): path for path in todo}
            for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress:
                    progress(done, len(todo))
    return results


def audit_files(root, paths, readers=None, cache_dir=None, workers=None, progress=None):
    """Audits every file (paths relative to `root`) once, in parallel.

    Unchanged files (same path, size and modification time) come from the
    cache in `cache_dir`, which must be outside `root`; None disables it.
    `progress(done, total)` is called as files are checked. Returns
    (FileChecks in the order of `paths`, {"checked", "from_cache", "seconds"}).
    """
    start = time.perf_counter()
    readers = image_io.normalize_readers(readers)
    signature = _cache_signature(readers)
    cache_path = audit_cache_path(cache_dir, root) if cache_dir else None
    cache = _load_cache(cache_path, signature)
    keys = {path: _file_key(os.path.join(root, path)) for path in paths}
    known = {}
    for path in paths:
        entry = cache.get(path)
        if entry and keys[path] is not None and entry["key"] == keys[path]:
            known[path] = FileCheck(path=path, **entry["check"])
    todo = [path for path in dict.fromkeys(paths) if path not in known]
    known.update(_check_all(root, todo, readers, workers, progress))
    if cache_path and todo:
        entries = {
            path: entry
            for path, entry in cache.items()
            if path not in keys and _file_key(os.path.join(root, path))
        }
        for path, check in known.items():
            if keys.get(path) is not None:
                fields = dataclasses.asdict(check)
                del fields["path"]
                entries[path] = {"key": keys[path], "check": fields}
        _save_cache(cache_path, root, signature, entries)
    stats = {
        "checked": len(todo),
        "from_cache": len(paths) - len(todo),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return [known[path] for path in paths], stats


class ProgressLine:
    """A progress callback for `audit_files` that prints one line to
    `stream` (stderr by default): rewritten in place on a terminal, every
    10% otherwise; silent below `min_total` files and, in logs, for audits
    that finish within `quiet_seconds` (ten lines for a one-second scan are
    noise)."""

    def __init__(self, label="auditing", stream=None, min_total=200, interval=0.25, quiet_seconds=2.0):
        self.label = label
        self.stream = stream
        self.min_total = min_total
        self.interval = interval
        self.quiet_seconds = quiet_seconds
        self.start_time = None
        self.last_time = 0.0
        self.last_tenth = 0

    def __call__(self, done, total):
        if total < self.min_total:
            return
        now = time.monotonic()
        self.start_time = now if self.start_time is None else self.start_time
        stream = self.stream or sys.stderr
        if not stream.isatty() and now - self.start_time < self.quiet_seconds:
            return
        line = f"    {self.label}: {done}/{total} files ({100 * done // total}%)"
        if stream.isatty():
            if done == total or now - self.last_time >= self.interval:
                self.last_time = now
                stream.write("\r" + line + ("\n" if done == total else ""))
                stream.flush()
        elif 10 * done // total > self.last_tenth:
            self.last_tenth = 10 * done // total
            stream.write(line + "\n")
            stream.flush()


# ---------------------------------------------------------------- duplicates


def duplicate_groups(samples, checks):
    """Groups (lists of Samples) of usable files with identical content."""
    by_hash = collections.defaultdict(list)
    for sample in samples:
        by_hash[checks[sample.path].sha256].append(sample)
    return [group for group in by_hash.values() if len(group) > 1]


def duplicate_warnings(groups, auto_split, limit=10):
    """Warnings about identical files: one summary line, then one line per
    group that crosses classes (conflicting labels) or splits (leakage)."""
    if not groups:
        return []
    files = sum(len(group) for group in groups)
    labels = [group for group in groups if len({sample.label for sample in group}) > 1]
    leaks = [group for group in groups if len({sample.split for sample in group}) > 1]
    lines = [
        f"{len(groups)} group(s) of identical files ({files} files), e.g. "
        + " = ".join(image_io.display_path(sample.path) for sample in groups[0][:3])
        + ("; each group was kept in one split" if auto_split and not leaks else "")
    ]
    for group in labels[:limit]:
        lines.append(
            "the same image has different labels: "
            + ", ".join(f"{image_io.display_path(sample.path)} ({sample.label})" for sample in group)
        )
    for group in leaks[:limit]:
        splits = sorted({sample.split for sample in group}, key=("train", "val", "test").index)
        lines.append(
            f"leakage: the same image is in {' and '.join(splits)}, so "
            f"{splits[-1]} results will look better than they are: "
            + ", ".join(f"{image_io.display_path(sample.path)} ({sample.split})" for sample in group)
        )
    hidden = max(0, len(labels) - limit) + max(0, len(leaks) - limit)
    if hidden:
        lines.append(f"... and {hidden} more group(s) like these: see the audit's duplicates")
    return lines


def test_near_train(index):
    """The test images that have a near-copy or an identical file in train
    (sorted): possible only in a pre-split folder, or with
    --near_duplicates warn or off."""
    split_of = {sample.path: sample.split for sample in index.samples}
    by_content = collections.defaultdict(list)
    for path, digest in (index.contents or {}).items():
        by_content[digest].append(path)
    leaked = set()
    for group in [*index.near_groups, *by_content.values()]:
        if any(split_of.get(path) == "train" for path in group):
            leaked.update(path for path in group if split_of.get(path) == "test")
    return sorted(leaked)


def _straddling(groups, split_of):
    return [group for group in groups if len({split_of[path] for path in group}) > 1]


def near_copy_warnings(groups, split_of, mode, limit=5):
    """Warnings about near-copy groups that straddle splits (never with
    "group" unless the folder came pre-split)."""
    straddling = _straddling(groups, split_of)
    if not straddling:
        return []
    lines = [
        f"{len(straddling)} group(s) of near-copies are in more than one split, so held-out scores "
        f"will look better than they are" + (" (the folder's own split is kept)" if mode == "group" else
                                           f" (--near_duplicates {mode})") + ": see the audit's near_duplicates"
    ]
    for group in straddling[:limit]:
        lines.append(
            "near-copies in " + " and ".join(sorted({split_of[path] for path in group})) + ": "
            + ", ".join(f"{image_io.display_path(path)} ({split_of[path]})" for path in group[:4])
            + (f" and {len(group) - 4} more" if len(group) > 4 else "")
        )
    return lines


def near_copy_lines(index, mode):
    """Lines for the run's output: the near-copy groups found, and whether
    each was kept in one split."""
    lines = []
    if index.near_groups and mode == "group":
        files = sum(len(group) for group in index.near_groups)
        lines.append(
            f"{len(index.near_groups)} group(s) of near-copies ({files} images) found by perceptual hash"
            + (", each kept in one split" if not _straddling(index.near_groups, {s.path: s.split for s in index.samples})
               else "; the folder's own split is kept")
        )
    return lines


def near_copy_group_lines(index, limit=10):
    """The near-copy groups, one line each (up to `limit`): every file with
    its split."""
    if not index.near_groups:
        return []
    split_of = {sample.path: sample.split for sample in index.samples}
    lines = ["near-copies (kept in one split unless --near_duplicates says otherwise):"]
    for number, group in enumerate(index.near_groups[:limit], start=1):
        lines.append(f"  group {number}: " + ", ".join(
            f"{image_io.display_path(path)} ({split_of.get(path, '?')})" for path in group))
    if len(index.near_groups) > limit:
        lines.append(f"  ... and {len(index.near_groups) - limit} more: see --json")
    return lines


def test_leak_lines(index):
    """The warning when test images have a near-copy (or an identical file)
    in train: the test score is optimistic."""
    leaked = test_near_train(index)
    if not leaked:
        return []
    total = sum(1 for sample in index.samples if sample.split == "test")
    return [
        f"{len(leaked)} of {total} test images have a near-copy in training: the test score is optimistic "
        "(metrics.json also scores the test split without them; the list: the audit's near_duplicates)"
    ]


def near_copy_report(index, mode, max_distance):
    """The audit's near_duplicates entry: the settings, every group with
    each file's class and split, and the test images with a near-copy in
    train."""
    sample_of = {sample.path: sample for sample in index.samples}
    return {
        "mode": mode,
        "max_distance": max_distance,
        "groups": [
            [{"path": image_io.display_path(path), "class": sample_of[path].label, "split": sample_of[path].split}
             for path in group if path in sample_of]
            for group in index.near_groups
        ],
        "test_with_copy_in_train": [image_io.display_path(path) for path in test_near_train(index)],
    }


# ---------------------------------------------------------------- reports


def _statistics(values):
    if not values:
        return None
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def train_image_size(train_checks):
    """The training images' median width, height and shorter side (what
    --image_size auto sizes a from-scratch model by), or None without any."""
    if not train_checks:
        return None
    return {
        "width": float(np.median([check.width for check in train_checks])),
        "height": float(np.median([check.height for check in train_checks])),
        "short_side": float(np.median([min(check.width, check.height) for check in train_checks])),
    }


def audit_report(index, scan, checks, duplicates, stats, near_copies=("group", 10)):
    """The audit as a JSON-ready dict (what audit.json holds): the
    inspection fields (`inspection_summary`, with the near-copies found
    under `near_copies`, (--near_duplicates, its distance)) plus per-class
    counts, why files were ignored, image size/mode/format statistics,
    decoders, duplicates, the imbalance ratio and the audit's timing."""
    used = [checks[sample.path] for sample in index.samples]
    counts = index.counts()
    train = [count for count in counts["train"].values()]
    skipped_by_class = collections.Counter(item.label for item in scan.skipped)
    ignored = collections.defaultdict(list)
    for path, kind in scan.ignored:
        ignored[kind].append(image_io.display_path(path))
    return {
        **inspection_summary(index, near_copies),
        "image_dir": index.root,
        "notes": list(index.notes),
        "files": {
            "usable": len(index.samples),
            "skipped": len(index.skipped),
            "ignored": index.ignored,
            "checked": stats["checked"],
            "from_cache": stats["from_cache"],
            "seconds": stats["seconds"],
        },
        "per_class": {
            name: {
                "usable": sum(counts[split][name] for split in counts),
                "skipped": skipped_by_class[name],
            }
            for name in index.class_names
        },
        "ignored_files": {
            IGNORED_KINDS[kind]: {"count": len(paths), "examples": paths[:20]}
            for kind, paths in ignored.items()
        },
        "formats": dict(collections.Counter(check.format for check in used).most_common()),
        "modes": dict(collections.Counter(check.mode for check in used).most_common()),
        "decoders": dict(collections.Counter(check.decoder for check in used).most_common()),
        "decoded_in_python_because": dict(
            collections.Counter(
                check.decoder_note for check in used if check.decoder != "native"
            ).most_common()
        ),
        "alpha_background": list(image_io.ALPHA_BACKGROUND),
        "width": _statistics([check.width for check in used]),
        "height": _statistics([check.height for check in used]),
        "train_image_size": train_image_size([checks[sample.path] for sample in index.samples
                                              if sample.split == "train"]),
        "imbalance_ratio": round(max(train) / min(train), 3) if train and min(train) else None,
        "duplicates": [
            [
                {"path": image_io.display_path(sample.path), "class": sample.label, "split": sample.split}
                for sample in group
            ]
            for group in duplicates
        ],
        "readers": {
            extension: image_io.describe_reader(function) for extension, function in index.readers.items()
        },
    }


def inspection_summary(index, near_copies=None):
    """The JSON object `python inspect_dataset.py --json` prints, exactly:
    layout, task (tasks.Task's name), classes (a multi-label run's
    labels), splits ({split: {class: n}}; multi-label: each label's
    images), images ({split: n}), skipped ([{path, reason}], paths relative
    to the dataset), ignored (a count), warnings, near_duplicates
    (near_copy_report; from the saved audit when `near_copies` is None)."""
    near = near_copy_report(index, *near_copies) if near_copies else (index.audit or {}).get("near_duplicates")
    return {
        "layout": index.layout,
        "task": index.task.name,
        "classes": list(index.class_names),
        "splits": index.counts(),
        "images": index.sizes(),
        "skipped": [{"path": item.path, "reason": item.reason} for item in index.skipped],
        "ignored": index.ignored,
        "warnings": list(index.warnings),
        "near_duplicates": near,
    }


def _count_phrase(counter):
    return ", ".join(f"{count} {name}" for name, count in counter.most_common())


def summary_lines(index, max_skipped=20, where="the audit", table=True):
    """The audit and split as printable lines: what was checked, every
    skipped file with its reason (up to `max_skipped`), what was ignored,
    which files are decoded in Python and why, the split table (unless not
    `table`: a page shows `split_table` as a table), notes and warnings. Every line is safe_text.terminal's: a name's control
    characters (an ESC sequence in a file name) print as escapes."""
    audit = index.audit
    files = audit["files"]
    if not files["from_cache"]:
        how = f"{files['checked']} files checked in {files['seconds']:.1f}s"
    elif not files["checked"]:
        how = f"{files['from_cache']} files unchanged since the last audit: results from its cache"
    else:
        how = (
            f"{files['checked']} new or changed files checked in {files['seconds']:.1f}s, "
            f"{files['from_cache']} unchanged from the cache"
        )
    lines = [
        f"audit: {files['usable']} files used, {files['skipped']} skipped, "
        f"{files['ignored']} ignored ({how})"
    ]
    if index.skipped:
        lines.append("skipped (not used for anything):")
        lines += [f"  {item.path}: {item.reason}" for item in index.skipped[:max_skipped]]
        if len(index.skipped) > max_skipped:
            lines.append(f"  ... and {len(index.skipped) - max_skipped} more: see {where}")
    if audit["ignored_files"]:
        lines.append(
            "ignored: "
            + "; ".join(
                f"{entry['count']} {kind} (e.g. {entry['examples'][0]})"
                for kind, entry in audit["ignored_files"].items()
            )
        )
    python = collections.Counter(audit["decoded_in_python_because"])
    if python:
        how = "; transparent pixels are shown on white" if python["transparency"] else ""
        lines.append(f"decoded in Python: {sum(python.values())} ({_count_phrase(python)}){how}")
    lines += _split_lines(index, table=table)
    lines += [f"note: {note}" for note in index.notes]
    lines += [f"warning: {warning}" for warning in index.warnings]
    return [safe_text.terminal(line) for line in lines]


def split_table(index):
    """The images of each class in each split, and its skipped files, as a
    table (header, rows): ("class", "train", "val", "test", "skipped"); a
    multi-label index's per label, with a last row "(none)" of the images
    with no label ("" skipped)."""
    counts = index.counts()
    skipped = index.audit["per_class"]
    header = ("label" if index.task.multi_label else "class", *counts, "skipped")
    rows = [(image_io.display_path(name), *(counts[split][name] for split in counts), skipped[name]["skipped"])
            for name in index.class_names]
    if index.task.multi_label:
        rows.append(("(none)", *(sum(1 for sample in index.samples if sample.split == split and not sample.labels)
                                 for split in counts), ""))
    return header, rows


def _split_lines(index, max_classes=30, table=True):
    """The split's lines: its layout and sizes, the table of images per
    class (`split_table`, unless not `table` or over `max_classes`
    classes) and the imbalance."""
    kind = "labels (several per image)" if index.task.multi_label else "classes"
    lines = [
        f"{index.layout} layout, {len(index.class_names)} {kind}, "
        + ", ".join(f"{split} {total}" for split, total in index.sizes().items())
        + " images"
    ]
    if len(index.class_names) > max_classes:
        return lines
    if table:
        header, rows = split_table(index)
        width = max(len(str(row[0])) for row in [header, *rows])
        lines.append(f"  {header[0]:<{width}}  train    val   test  skipped")
        for row in rows:
            lines.append((f"  {row[0]:<{width}}  " + " ".join(f"{count:>6}" for count in row[1:4])
                          + (f" {row[4]:>8}" if row[4] != "" else "          images with no label")).rstrip())
    ratio = index.audit["imbalance_ratio"]
    if ratio and ratio > 1.5:
        lines.append(
            f"  imbalance: the most common label has {ratio:.1f}x the training images of the rarest"
            if index.task.multi_label else
            f"  imbalance: the largest class has {ratio:.1f}x the training images of the smallest"
        )
    return lines
