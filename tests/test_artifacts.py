"""The model folder: atomic writes, stale temp files, run stamps, runs,
publishing, companions and their errors, is_inside, sha256."""

import datetime
import hashlib
import json
import os
import re

import pytest

import artifacts


def listing(folder):
    return sorted(os.listdir(folder))


def read_text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


# ---------------------------------------------------------------- atomic writes


def test_writes_make_the_folder_write_the_content_and_leave_no_temp_file(tmp_path):
    folder = tmp_path / "made" / "here"

    json_path = artifacts.write_json(str(folder / "data.json"), {"name": "chat noir", "n": [1, 2]})
    csv_path = artifacts.write_csv(str(folder / "rows.csv"), [("path", "class"), ("a,b.png", "cat")])
    text_path = artifacts.write_text(str(folder / "notes.txt"), "first line\nsecond line\n")

    assert (json_path, csv_path, text_path) == tuple(str(folder / name) for name in ("data.json", "rows.csv", "notes.txt"))
    assert listing(folder) == ["data.json", "notes.txt", "rows.csv"]
    assert json.loads(read_text(json_path)) == {"name": "chat noir", "n": [1, 2]}
    assert read_text(csv_path).splitlines() == ["path,class", '"a,b.png",cat']
    assert read_text(text_path) == "first line\nsecond line\n"


def test_a_rewrite_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "data.json")
    artifacts.write_json(path, {"version": 1})
    artifacts.write_json(path, {"version": 2})
    assert artifacts.read_json(path) == {"version": 2}
    assert listing(tmp_path) == ["data.json"]


def test_the_temp_file_is_a_sibling_named_as_ours_and_gets_the_umask_mode(tmp_path):
    seen = []

    def write(temp_path):
        seen.append(temp_path)
        assert os.path.exists(temp_path)
        with open(temp_path, "w", encoding="utf-8") as handle:
            handle.write("x")

    previous = os.umask(0o027)
    try:
        artifacts.atomic_write(str(tmp_path / "model.keras"), write)
    finally:
        os.umask(previous)

    (temp_path,) = seen
    assert os.path.dirname(temp_path) == str(tmp_path)  # same folder: os.replace stays one rename
    assert artifacts.TEMP_NAME.match(os.path.basename(temp_path))
    assert os.path.basename(temp_path).startswith(".model.") and temp_path.endswith(".tmp.keras")
    assert listing(tmp_path) == ["model.keras"]
    assert os.stat(tmp_path / "model.keras").st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600


def test_a_write_that_raises_keeps_the_old_file_and_leaves_no_temp_sibling(tmp_path):
    path = str(tmp_path / "notes.txt")
    artifacts.write_text(path, "the old text")

    def half_then_crash(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            handle.write("the new te")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        artifacts.atomic_write(path, half_then_crash)
    # json.dump fails part way through on a value it cannot encode.
    with pytest.raises(TypeError):
        artifacts.write_json(path, {"fine": 1, "not json": object()})

    assert read_text(path) == "the old text"
    assert listing(tmp_path) == ["notes.txt"]


# ---------------------------------------------------------------- stale temp files


def test_remove_stale_temp_files_removes_only_our_old_temp_names(tmp_path):
    now = 1_900_000_000.0
    old = now - artifacts.STALE_TEMP_SECONDS - 60
    young = now - artifacts.STALE_TEMP_SECONDS + 60
    files = {
        ".best_model.ab12cd34.tmp.keras": old,  # ours, old: removed
        ".history.z9_y8x7w.tmp": old,  # ours, no extension, old: removed
        ".best_model.ef56gh78.tmp.keras": young,  # ours but young: kept
        "best_model.keras": old,  # not a temp name
        ".best_model.ab12cd3.tmp.keras": old,  # 7 characters, not 8
        ".best_model.AB12CD34.tmp.keras": old,  # capitals are never ours
        "best_model.ab12cd34.tmp.keras": old,  # no leading dot
        "notes.tmp": old,
    }
    for name, mtime in files.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / ".folder.ab12cd34.tmp").mkdir()  # a folder named like ours: not a file
    os.utime(tmp_path / ".folder.ab12cd34.tmp", (old, old))
    os.symlink(tmp_path / "best_model.keras", tmp_path / ".link.ab12cd34.tmp")
    os.utime(tmp_path / ".link.ab12cd34.tmp", (old, old), follow_symlinks=False)

    removed = artifacts.remove_stale_temp_files(str(tmp_path), now=now)

    assert sorted(removed) == [".best_model.ab12cd34.tmp.keras", ".history.z9_y8x7w.tmp"]
    assert listing(tmp_path) == sorted(
        (set(files) | {".folder.ab12cd34.tmp", ".link.ab12cd34.tmp"}) - set(removed)
    )
    assert artifacts.remove_stale_temp_files(str(tmp_path / "absent"), now=now) == []


def test_a_write_clears_stale_temp_files_from_its_folder(tmp_path):
    stale = tmp_path / ".run_config.ab12cd34.tmp.json"
    stale.write_text("{half")
    old = os.stat(stale).st_mtime - artifacts.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))

    artifacts.write_json(str(tmp_path / "other.json"), {})

    assert listing(tmp_path) == ["other.json"]


# ---------------------------------------------------------------- stamps and runs


def test_new_run_stamp_gives_distinct_reserved_stamps_within_one_second(tmp_path):
    results = tmp_path / "results"
    now = 1_900_000_000.0
    base = datetime.datetime.fromtimestamp(now).strftime("%Y%m%d-%H%M%S")

    stamps = [artifacts.new_run_stamp(str(results), now=now) for _ in range(25)]

    assert re.fullmatch(r"\d{8}-\d{6}", base)
    assert stamps == [base] + [f"{base}-{number}" for number in range(2, 26)]
    assert listing(results / artifacts.STAMPS_FOLDER) == sorted(stamps)
    assert all((results / artifacts.STAMPS_FOLDER / stamp).is_dir() for stamp in stamps)


def test_new_run_stamp_skips_names_a_results_category_or_also_in_folder_has(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    now = 1_900_000_000.0
    base = datetime.datetime.fromtimestamp(now).strftime("%Y%m%d-%H%M%S")
    (results / "evaluation" / base).mkdir(parents=True)  # an older result of that second
    (runs / f"{base}-2").mkdir(parents=True)  # a run folder of that name

    stamp = artifacts.new_run_stamp(str(results), now=now, also_in=(str(runs),))

    assert stamp == f"{base}-3"
    assert (runs / stamp).is_dir() and (results / artifacts.STAMPS_FOLDER / stamp).is_dir()


def test_new_run_creates_an_empty_run_folder_named_by_its_reserved_stamp(tmp_path):
    artifacts_dir, results = tmp_path / "art", tmp_path / "res"
    now = 1_900_000_000.0

    first_id, first_folder = artifacts.new_run(str(artifacts_dir), str(results), now=now)
    second_id, second_folder = artifacts.new_run(str(artifacts_dir), str(results), now=now)

    assert first_id != second_id
    for run_id, folder in ((first_id, first_folder), (second_id, second_folder)):
        assert folder == str(artifacts_dir / "runs" / run_id)
        assert os.path.isdir(folder) and os.listdir(folder) == []
        assert (results / artifacts.STAMPS_FOLDER / run_id).is_dir()
    assert artifacts.run_ids(str(artifacts_dir)) == sorted([first_id, second_id])


def test_run_ids_lists_run_folders_oldest_first(tmp_path):
    assert artifacts.run_ids(str(tmp_path)) == []
    runs = tmp_path / "runs"
    for name in ("20260102-000000", "20260101-000000", "20260101-000000-2"):
        (runs / name).mkdir(parents=True)
    (runs / "20250101-000000.txt").write_text("not a run")

    assert artifacts.run_ids(str(tmp_path)) == ["20260101-000000", "20260101-000000-2", "20260102-000000"]


# ---------------------------------------------------------------- publishing


def make_finished_run(artifacts_dir, run_id):
    folder = artifacts_dir / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / artifacts.MODEL_FILE).write_text(f"model of {run_id}")
    artifacts.write_companions(
        str(folder), ["cat", run_id], [artifacts.ManifestRow("cat/1.png", "cat", "train")], {"run": run_id}
    )
    return folder


def test_publish_points_latest_and_the_model_links_at_the_run_and_switches(tmp_path):
    artifacts_dir = tmp_path / "art"
    first, second = make_finished_run(artifacts_dir, "run-1"), make_finished_run(artifacts_dir, "run-2")
    assert artifacts.published_run(str(artifacts_dir)) is None

    for run in (first, second, first):
        published = artifacts.publish(str(artifacts_dir), str(run))

        assert published == str(artifacts_dir / artifacts.MODEL_FILE)
        latest = artifacts_dir / artifacts.LATEST_LINK
        assert os.path.islink(latest) and os.readlink(latest) == os.path.join("runs", run.name)
        assert artifacts.published_run(str(artifacts_dir)) == run.name
        assert read_text(published) == f"model of {run.name}"
        for name in (artifacts.MODEL_FILE, *artifacts.COMPANION_FILES):
            assert os.path.islink(artifacts_dir / name)
            assert os.path.realpath(artifacts_dir / name) == os.path.realpath(run / name)
        assert artifacts.read_class_names(str(artifacts_dir)) == ("cat", run.name)
        assert artifacts.companions_folder(published) == os.path.realpath(run)
        assert not [name for name in os.listdir(artifacts_dir) if name.endswith(".tmp")]


def test_published_links_are_relative_so_the_folder_can_move(tmp_path):
    artifacts_dir = tmp_path / "art"
    make_finished_run(artifacts_dir, "run-1")
    artifacts.publish(str(artifacts_dir), str(artifacts_dir / "runs" / "run-1"))

    moved = tmp_path / "moved"
    os.rename(artifacts_dir, moved)

    assert read_text(moved / artifacts.MODEL_FILE) == "model of run-1"
    assert artifacts.read_run_config(str(moved)) == {"run": "run-1"}


# ---------------------------------------------------------------- companions


def test_companions_round_trip(tmp_path):
    manifest = [
        artifacts.ManifestRow("cats/a, b.png", "cat", "train"),
        artifacts.ManifestRow("dogs/\u00e9t\u00e9 \"1\".jpg", "dog", "val"),
        artifacts.ManifestRow("birds/x.png", "oiseau bleu", "test"),
    ]
    run_config = {"image_size": 32, "backbone": "mobilenet_v2", "nested": {"a": [1, 2.5, None]}, "name": "\u00e9"}

    assert artifacts.write_companions(str(tmp_path), ["cat", "dog", "oiseau bleu"], manifest, run_config) == str(tmp_path)

    assert listing(tmp_path) == sorted(artifacts.COMPANION_FILES)
    assert artifacts.read_class_names(str(tmp_path)) == ("cat", "dog", "oiseau bleu")
    assert artifacts.read_run_config(str(tmp_path)) == run_config
    assert artifacts.has_manifest(str(tmp_path))
    assert artifacts.read_manifest(str(tmp_path)) == manifest
    assert artifacts.read_json(str(tmp_path / artifacts.CLASS_INDEX_FILE)) == {"0": "cat", "1": "dog", "2": "oiseau bleu"}


def test_class_names_follow_the_index_not_the_file_order(tmp_path):
    (tmp_path / artifacts.CLASS_INDEX_FILE).write_text(json.dumps({"10": "k", "2": "c", "0": "a", "1": "b", **{str(n): chr(97 + n) for n in range(3, 10)}}))
    assert artifacts.read_class_names(str(tmp_path)) == tuple("abcdefghijk")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no class_index.json beside the model"),
        ("{not json", "is not readable JSON"),
        ('["cat", "dog"]', "must hold a JSON dict, not a list"),
        ('{"0": "cat", "2": "dog"}', "must map 0..1 to class names, with no gap"),
        ('{"1": "cat", "2": "dog"}', "with no gap"),
        ('{"0": "cat", "1": ""}', "with no gap"),
        ('{"0": "cat", "1": 7}', "with no gap"),
    ],
)
def test_bad_class_index_is_a_companion_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / artifacts.CLASS_INDEX_FILE).write_text(content)
    with pytest.raises(artifacts.CompanionError, match=re.escape(message)) as error:
        artifacts.read_class_names(str(tmp_path))
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no run_config.json beside the model"),
        ("", "is not readable JSON"),
        ("[1, 2]", "must hold a JSON dict, not a list"),
        ('"text"', "must hold a JSON dict, not a str"),
    ],
)
def test_bad_run_config_is_a_companion_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / artifacts.RUN_CONFIG_FILE).write_text(content)
    with pytest.raises(artifacts.CompanionError, match=re.escape(message)):
        artifacts.read_run_config(str(tmp_path))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        ("", "is not a split manifest"),
        ("file,label,split\na.png,cat,train\n", "is not a split manifest"),
        ("path,class\na.png,cat\n", "is not a split manifest"),
        ("path,class,split\na.png,cat\n", "is not a split manifest"),
        ("path,class,split\na.png,cat,train,extra\n", "is not a split manifest"),
    ],
)
def test_bad_manifest_is_a_companion_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / artifacts.SPLIT_MANIFEST_FILE).write_text(content)
    assert artifacts.has_manifest(str(tmp_path)) == (content is not None)
    with pytest.raises(artifacts.CompanionError, match=re.escape(message)):
        artifacts.read_manifest(str(tmp_path))


def test_companion_error_is_a_value_error():
    assert issubclass(artifacts.CompanionError, ValueError)


# ---------------------------------------------------------------- paths and hashes


def test_is_inside_resolves_links_and_never_compares_string_prefixes(tmp_path):
    data, data2, outside = tmp_path / "data", tmp_path / "data2", tmp_path / "outside"
    for folder in (data / "cats", data2, outside):
        folder.mkdir(parents=True)
    os.symlink(outside, data / "escape")  # looks inside, leads outside
    os.symlink(data / "cats", outside / "back")  # looks outside, leads inside

    assert artifacts.is_inside(str(data), str(data))
    assert artifacts.is_inside(str(data / "cats" / "a.png"), str(data))
    assert not artifacts.is_inside(str(data2), str(data))
    assert not artifacts.is_inside(str(data2 / "x.png"), str(data))
    assert not artifacts.is_inside(str(data), str(data / "cats"))
    assert not artifacts.is_inside(str(data / "escape"), str(data))
    assert artifacts.is_inside(str(outside / "back"), str(data))
    assert artifacts.is_inside(str(data2 / ".." / "data" / "cats"), str(data))
    assert not artifacts.is_inside(str(data / ".." / "data2"), str(data))


def test_file_sha256_equals_hashlibs(tmp_path):
    content = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB chunks and a remainder
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")

    assert artifacts.file_sha256(str(path)) == hashlib.sha256(content).hexdigest()
    assert artifacts.file_sha256(str(empty)) == hashlib.sha256(b"").hexdigest()


def test_a_manifest_with_formula_names_is_guarded_and_round_trips(tmp_path):
    # A class or file name a spreadsheet would run (OWASP's CSV injection)
    # is written with a leading quote and read back exactly: evaluate and
    # resume compare these rows with the dataset's files.
    manifest = [
        artifacts.ManifestRow("=cmd|' -C calc'!A0/-x.png", "=cmd|' -C calc'!A0", "train"),
        artifacts.ManifestRow("@a/+1.png", "@a", "val", "-group"),
        artifacts.ManifestRow("'q/'=b.png", "'q", "test", "'=g"),
    ]
    artifacts.write_companions(str(tmp_path), ["=cmd|' -C calc'!A0", "@a", "'q"], manifest, {})

    assert artifacts.read_manifest(str(tmp_path)) == manifest
    cells = [cell for row in read_csv_cells(tmp_path / artifacts.SPLIT_MANIFEST_FILE) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert "'=cmd|' -C calc'!A0" in cells and "''=g" in cells


def read_csv_cells(path):
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))
