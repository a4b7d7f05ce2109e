"""Which finished run is published (the model evaluate.py, predict.py and
app.py use by default): main.py's --publish policy, and publishing a
finished run again.

    python main.py --image_dir DIR                    # auto: published unless it scores worse
    python main.py --image_dir DIR --publish always   # published whatever it scores
    python main.py --image_dir DIR --publish never    # kept in its run folder only
    python main.py --publish RUN                      # publish a finished run again; trains nothing

auto (the default) keeps a quick try from replacing a good model: a run
that scores worse than the published model on the same test images is
kept in its run folder but not published, and says so with both scores
and the command that publishes it anyway. The same test images: both
models are scored on the images in both runs' test splits and in neither
run's train or val split (compare.common_test_images; with the same
--seed and split options, this run's whole test split). Worse: a lower
accuracy (multi-label: micro-F1); a tie publishes the new run. When the
two cannot be compared (nothing published yet, the published run was
trained on another folder or other classes, or no test image is in both
test splits) the run is published, as always, and says why.
"""

import dataclasses
import os

import artifacts
import compare
import config
import inference
import tasks
import theme
from errors import UserError

POLICIES = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What publishing did with a run: whether it is published now, and
    the lines that say so (printed by the stage, repeated in the summary)."""

    published: bool
    lines: tuple


def publish_command(artifacts_dir, stamp):
    """The one command that publishes run `stamp` of ARTIFACTS_DIR."""
    default = os.path.normpath(config.DEFAULTS.artifacts_dir)
    where = "" if os.path.normpath(artifacts_dir) == default else f" --artifacts_dir {artifacts_dir}"
    return f"python main.py --publish {stamp}{where}"


def headline_score(scores, multi_label):
    """(name, value) of the score "worse" is decided by."""
    return ("micro-F1", scores["micro_avg"]["f1"]) if multi_label else ("accuracy", scores["accuracy"])


def not_comparable(folder, published_folder):
    """Why the run in `folder` cannot be scored against the published run
    in `published_folder` on the same images, or None when it can."""
    try:
        ours, theirs = artifacts.read_run_config(folder), artifacts.read_run_config(published_folder)
    except artifacts.CompanionError as error:
        return f"its run config cannot be read ({error})"
    if not artifacts.is_finished(published_folder, theirs):
        return "it did not finish training"
    if os.path.realpath(str(ours.get("image_dir"))) != os.path.realpath(str(theirs.get("image_dir"))):
        return f"it was trained on another folder ({theirs.get('image_dir')})"
    if sorted(ours.get("class_names") or ()) != sorted(theirs.get("class_names") or ()) \
            or tasks.saved_task(ours) != tasks.saved_task(theirs):
        return "it was trained on other classes"
    return None


def scores_on_common_images(folders, image_dir, batch_size, readers=None):
    """(CommonImages, [scores of each run]) of the runs in `folders`, each
    model scored on the test images they share (compare.common_test_images).
    Raises UserError when no test image is common to them."""
    common = compare.common_test_images({folder: artifacts.read_manifest(folder) for folder in folders})
    scored = []
    for folder in folders:
        trained = inference.load_trained_model(os.path.join(folder, artifacts.MODEL_FILE))
        images = compare.common_images_of(trained, image_dir, common)
        evaluation = inference.evaluate_images(trained, images, batch_size, readers)
        scored.append(compare.with_saved_thresholds(trained, evaluation).metrics())
    return common, scored


def compared(artifacts_dir, folder, published, image_dir, batch_size, readers=None):
    """auto's decision for the run in `folder` against the published run
    `published`: (publish it?, lines)."""
    stamp = os.path.basename(os.path.normpath(folder))
    published_folder = os.path.join(artifacts.runs_folder(artifacts_dir), published)
    try:
        why = not_comparable(folder, published_folder)
    except UserError as error:  # a run config of a kind this version does not know
        why = str(error)
    if why is None:
        try:
            common, (ours, theirs) = scores_on_common_images([folder, published_folder], image_dir, batch_size,
                                                             readers)
        except UserError as error:
            why = f"the two cannot be scored on the same images ({error})"
    if why:
        return True, [f"the published run {published} is not compared: {why}"]
    multi_label = tasks.saved_task(artifacts.read_run_config(folder)).multi_label
    name, our_score = headline_score(ours, multi_label)
    _, their_score = headline_score(theirs, multi_label)
    # Scores in the one format every other line uses (theme.score), more
    # decimals only where that would show two different scores as equal.
    shown = theme.score if theme.score(our_score) != theme.score(their_score) or our_score == their_score else (
        lambda value: f"{value:.4f}")
    side_by_side = (f"{name} {shown(our_score)} for this run, {shown(their_score)} for the published run {published}, "
                    f"on the same {len(common.paths)} test images")
    if our_score < their_score:
        return False, [
            f"not published (--publish auto): {side_by_side}; the published model stays",
            f"kept in {folder}; to publish it anyway: {publish_command(artifacts_dir, stamp)}",
        ]
    return True, [f"{side_by_side}: not worse, so it replaces it (--publish auto)"]


def decide(policy, artifacts_dir, folder, image_dir, batch_size, readers=None):
    """Publishes the finished run in `folder` (trained on `image_dir`) or
    not, as `policy` (auto, always, never) says. The one path by which
    main.py publishes, in every mode. Returns a Decision."""
    stamp = os.path.basename(os.path.normpath(folder))
    published = artifacts.published_run(artifacts_dir)
    if policy == "never":
        return Decision(False, (
            f"not published (--publish never): the published model is still "
            f"{'run ' + published if published else 'none'}",
            f"kept in {folder}; to publish it: {publish_command(artifacts_dir, stamp)}",
        ))
    lines = []
    if policy == "auto" and published and published != stamp:
        publish, lines = compared(artifacts_dir, folder, published, image_dir, batch_size, readers)
        if not publish:
            return Decision(False, tuple(lines))
    path = artifacts.publish(artifacts_dir, folder)
    return Decision(True, (*lines, f"published: {path} -> run {stamp} ({folder})"))


def publish_again(artifacts_dir, run_id):
    """main.py --publish RUN: publishes the finished run `run_id` of
    ARTIFACTS_DIR again, whatever it scores; trains nothing. Returns the
    lines to print. Raises UserError for a run that is unknown or did not
    finish training."""
    known = artifacts.run_ids(artifacts_dir)
    if run_id not in known:
        raise UserError(
            f"no run {run_id} in {artifacts.runs_folder(artifacts_dir)} (runs there: "
            f"{', '.join(known[-5:]) or 'none'}); --publish takes {', '.join(POLICIES)} or a finished run's id. "
            f"Received: publish={run_id}"
        )
    folder = os.path.join(artifacts.runs_folder(artifacts_dir), run_id)
    saved = artifacts.run_config_or_empty(folder)
    if not artifacts.is_finished(folder, saved):
        raise UserError(
            f"run {run_id} did not finish training (status {saved.get('status', 'unknown')}): only a finished "
            f"run can be published (main.py --resume {run_id} finishes an interrupted one). Received: publish={run_id}"
        )
    before = artifacts.published_run(artifacts_dir)
    try:
        path = artifacts.publish(artifacts_dir, folder)
    except artifacts.CompanionError as error:
        raise UserError(str(error)) from None
    return [f"published: {path} -> run {run_id} ({folder}); before: {'run ' + before if before else 'none'}",
            "evaluate.py, predict.py and app.py now use it; nothing was trained"]
