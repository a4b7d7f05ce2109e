"""config.py: each option declared once, and everything built from it (the
parsers, the checks, the resume and worker comparisons, the docs' tables)."""

import dataclasses
import os
import re

import pytest

import app
import config
import dataset_files
import errors
import evaluate
import inspect_dataset
import main as main_script
import memory
import predict
from conftest import ROOT, make_flat_dataset, one_line_error

PARSERS = {
    "main": main_script.build_parser,
    "evaluate": evaluate.build_parser,
    "predict": predict.build_parser,
    "inspect": inspect_dataset.build_parser,
    "app": app.build_parser,
}


def parser_options(parser):
    """{dest: action} of a parser's options, --help left out."""
    return {action.dest: action for action in parser._actions if action.dest != "help"}


@pytest.mark.parametrize("script", config.SCRIPTS)
def test_each_script_parses_exactly_its_options_of_the_table_with_their_defaults(script):
    actions = parser_options(PARSERS[script]())
    table = config.options_of(script)

    assert list(actions) == list(table)
    for name, action in actions.items():
        assert action.option_strings == [f"--{name}", *(f"--{alias}" for alias in table[name].aliases)]
        assert action.default == config.default_of(name, script)
        assert action.help.startswith(table[name].help_for(script))
        assert action.help.endswith(f"(default: {config.shown_default(name, script)})")


def test_every_option_is_declared_whole():
    for field in dataclasses.fields(config.Config):
        if field.name == "demo":
            assert "option" not in field.metadata  # set by main.py, never typed
            continue
        spec = field.metadata["option"]
        assert spec.help and spec.group in config.GROUPS, field.name
        assert spec.scripts and set(spec.scripts) <= set(config.SCRIPTS), field.name
        assert set(spec.defaults) <= set(spec.scripts) and set(spec.helps) <= set(spec.scripts), field.name
        known = {"display", "path", "worker_local", "run_locator", "output", "common"}
        assert spec.tags <= known, (field.name, spec.tags - known)


def test_the_seeds_commands_parse_as_written():
    options = main_script.parse_arguments(["--image_dir", ROOT, "--epochs", "10", "--batch_size", "32", "--augment", "1",
                                           "--show", "0", "--artifacts_dir", "/tmp/a", "--results_dir", "/tmp/r"])
    assert (options.epochs, options.batch_size, options.augment, options.show) == (10, 32, 1, "0")
    args = evaluate.build_parser().parse_args(["--image_dir", "DIR", "--rows", "2", "--cols", "5"])
    assert (args.rows, args.cols, args.image_size) == (2, 5, None)  # the model fixes the size
    args = predict.build_parser().parse_args(["--image_dir", "DIR", "--rows", "2", "--cols", "5", "--gradcam", "1"])
    assert (args.rows, args.cols, args.gradcam) == (2, 5, 1)
    assert main_script.build_parser().parse_args([]).rows == config.DEFAULTS.rows == 2


def markdown_tables(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.parametrize("path", ["README.md", "docs/options.md"])
def test_the_docs_option_tables_are_the_tables_the_option_table_makes(path):
    text = markdown_tables(path)
    assert config.OPTION_TABLE.search(text), f"{path} has no option table"
    assert config.fill_option_tables(text) == text, (
        f"{path}'s option tables differ from config.py's: run "
        "python -c \"import config; config.refresh_option_tables(['README.md', 'docs/options.md'])\""
    )


def test_docs_options_lists_every_option_of_every_script():
    text = markdown_tables("docs/options.md")
    for script in config.SCRIPTS:
        assert f"<!-- options:{script} -->" in text
    listed = {line.split("`")[1][2:] for line in text.splitlines() if line.startswith("| `--")}
    assert listed == {name for script in config.SCRIPTS for name in config.options_of(script)}


def test_a_changed_default_shows_in_the_rendered_table(monkeypatch):
    # The check above can fail: the table follows the declaration.
    before = config.options_markdown("main", "common")
    field = next(field for field in dataclasses.fields(config.Config) if field.name == "epochs")
    monkeypatch.setattr(config, "DEFAULTS", dataclasses.replace(config.DEFAULTS, epochs=99))
    assert "| `--epochs` | 99 |" in config.options_markdown("main", "common")
    assert "| `--epochs` | 10 |" in before and field.default == 10


# Per option with a check: a value the check refuses, and what the line says.
REFUSED = {
    "image_size": ("16", "image_size must be at least 32"),
    "batch_size": ("0", "batch_size must be at least 1"),
    "val_split": ("1.5", "val_split must be between 0 and 1 (exclusive)"),
    "test_split": ("0", "test_split must be between 0 and 1 (exclusive)"),
    "rotation": ("-1", "rotation must be 0 or more"),
    "zoom": ("1", "zoom must be below 1"),
    "translation": ("-0.1", "translation must be 0 or more"),
    "contrast": ("2", "contrast must be below 1"),
    "alpha": ("0", "alpha must be positive"),
    "weights": ("/no/such/file.h5", "weights must be imagenet, none or the path of a weights file"),
    "dropout": ("1", "dropout must be in [0, 1)"),
    "epochs": ("0", "epochs must be at least 1"),
    "learning_rate": ("0", "learning_rate must be positive"),
    "fine_tune_epochs": ("-1", "fine_tune_epochs must be 0 or more"),
    "fine_tune_layers": ("0", "fine_tune_layers must be at least 1"),
    "patience": ("0", "patience must be at least 1"),
    "rows": ("21", "rows must be between 1 and 20"),
    "cols": ("0", "cols must be between 1 and 20"),
    "grid_per_class": ("0", "grid_per_class must be between 1 and 20"),
    "tta": ("33", "tta must be between 1 and 32"),
    "top_k": ("0", "top_k must be at least 1"),
    "port": ("70000", "port must be between 1 and 65535"),
    "max_upload_mb": ("0", "max_upload_mb must be positive"),
    "external": ("/no/such/model.onnx", "external must be an existing .onnx file"),
    "label_smoothing": ("0.5", "label_smoothing must be between 0 and 0.3"),
    "warmup_epochs": ("-1", "warmup_epochs must be 0 or more"),
    "weight_decay": ("1.5", "weight_decay must be between 0 and 1"),
    "time": ("0", "time must be positive"),
    "shear": ("50", "shear must be between 0 and 45"),
    "mixup": ("-1", "mixup must be between 0 and 1"),
    "erasing": ("1.5", "erasing must be between 0 and 1"),
    "cutmix": ("2", "cutmix must be between 0 and 1"),
    "mlflow": ("", "mlflow must not be empty"),
    "worker_wait": ("0", "worker_wait must be positive"),
    "folds": ("1", "folds must be at least 2"),
    "group_by": ("(P", "group_by is not a regular expression"),
    "near_duplicate_distance": ("40", "near_duplicate_distance must be between 0 and 32"),
    "threshold": ("1.5", "threshold must be between 0 and 1"),
    "path_column": (" ", "path_column must not be empty"),
    "label_column": (" ", "label_column must not be empty"),
    "no_label": (" ", "no_label must not be empty"),
    "label_delimiter": ("", "label_delimiter must not be empty"),
}


def test_every_checked_option_has_a_refused_value_here():
    checked = {name for script in config.SCRIPTS for name, spec in config.options_of(script).items() if spec.check}
    assert checked - {"artifacts_dir", "results_dir"} == set(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_check_refuses_with_one_line_naming_the_value(name, tmp_path):
    value, message = REFUSED[name]
    script = next(script for script in config.SCRIPTS if name in config.options_of(script))
    args = PARSERS[script]().parse_args([f"--{name}", value])
    with pytest.raises(errors.UserError, match=r"^" + message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)") + r".*Received: " + name + "=") as raised:
        config.validate(config.config_from_args(args), script)
    assert "\n" not in str(raised.value)


def test_rules_of_several_options_together(tmp_path):
    args = main_script.build_parser().parse_args(["--val_split", "0.5", "--test_split", "0.5"])
    with pytest.raises(errors.UserError, match="val_split \\+ test_split must be below 1"):
        config.validate(config.config_from_args(args), "main")
    args = evaluate.build_parser().parse_args(["--quantize", "int8"])
    with pytest.raises(errors.UserError, match="add litert to --export"):
        config.validate(config.config_from_args(args), "evaluate")
    (tmp_path / "a.onnx").write_bytes(b"")
    args = evaluate.build_parser().parse_args(["--external", str(tmp_path / "a.onnx")])
    with pytest.raises(errors.UserError, match="--external adds a model from another framework to a comparison: "
                       "add --compare"):
        config.validate(config.config_from_args(args), "evaluate")
    args = main_script.build_parser().parse_args(["--backbone", "inception_v3", "--image_size", "64"])
    with pytest.raises(errors.UserError, match="at least 75 for inception_v3"):
        config.validate(config.config_from_args(args), "main")


def test_an_image_size_beyond_the_largest_is_one_line_and_help_says_the_bound(tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data", per_class=2)
    code = main_script.main(["--image_dir", data, "--image_size", "100000", "--artifacts_dir", str(tmp_path / "art"),
                             "--results_dir", str(tmp_path / "res")])
    assert code == 2
    assert one_line_error(capsys).startswith("error: image_size must be at most 2048 (")
    assert not (tmp_path / "art").exists()
    assert "32 to 2048" in " ".join(main_script.build_parser().format_help().split())


@pytest.mark.parametrize("weights, size, kept", [
    ("none", 1024, "the layer outputs kept to train from scratch"),
    ("imagenet", 2048, "the largest layer's input and output in the frozen backbone"),
])
def test_a_batch_too_big_for_the_memory_is_refused_before_a_run_folder_exists(weights, size, kept, tmp_path, capsys,
                                                                               monkeypatch):
    import backbones

    monkeypatch.setattr(memory, "available", lambda: (4 * memory.GIB, "of RAM available"))
    data = make_flat_dataset(tmp_path / "data", per_class=2)
    code = main_script.main(["--image_dir", data, "--image_size", str(size), "--batch_size", "32", "--weights", weights,
                             "--artifacts_dir", str(tmp_path / "art"), "--results_dir", str(tmp_path / "res")])

    assert code == 2
    line = one_line_error(capsys)

    def need(side, batch):
        return backbones.training_memory_bytes("mobilenet_v2", 1.0, side, batch, weights == "none")

    assert line.startswith(f"error: a batch of 32 images of {size}x{size} px through mobilenet_v2 needs at least "
                           f"{need(size, 32) / memory.GIB:.1f} GiB ({kept}), but this process has 4.0 GiB of RAM "
                           "available: lower --batch_size to ")
    assert not (tmp_path / "art").exists() and not (tmp_path / "res").exists()
    # What the line advises fits.
    fitting_batch, fitting_size = (int(number) for number in re.findall(r"to (\d+)", line)[:2])
    assert need(size, fitting_batch) <= 4 * memory.GIB and need(fitting_size, 32) <= 4 * memory.GIB
    args = main_script.build_parser().parse_args(["--image_size", str(fitting_size), "--weights", weights])
    config.validate(config.config_from_args(args), "main")


@pytest.mark.slow
def test_the_memory_estimate_counts_the_layer_outputs_of_the_built_backbone():
    import math

    import backbones
    import keras

    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    sizes = [math.prod(layer.output.shape[1:]) / 224**2 for layer in model.layers]
    family = backbones.BACKBONES["mobilenet_v2"]
    assert family["activations"] == pytest.approx(sum(sizes), abs=1)
    assert family["largest_activation"] == pytest.approx(max(sizes), abs=0.1)
    assert backbones.training_memory_bytes("mobilenet_v2", 1.0, 224, 2, True) == int(
        2 * 224**2 * (backbones.KEPT_FRACTION * family["activations"] + 3) * 4)


def test_available_memory_is_the_smaller_of_the_ram_and_the_tightest_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24731400 kB\nMemAvailable:    8388608 kB\n")
    at_root = tmp_path / "cgroup_root"
    at_root.write_text("0::/\n")
    version2 = tmp_path / "v2"
    version2.mkdir()
    (version2 / "memory.max").write_text("5368709120\n")
    (version2 / "memory.current").write_text("1073741824\n")
    assert memory.available(str(meminfo), str(version2), str(at_root)) == (
        4 * memory.GIB, "left under this process's memory limit of 5.0 GiB")
    (version2 / "memory.max").write_text("max\n")
    assert memory.available(str(meminfo), str(version2), str(at_root)) == (8 * memory.GIB, "of RAM available")
    # systemd-run -p MemoryMax=3G: the limit is on the scope above this process's own cgroup.
    nested = tmp_path / "nested"
    nested.write_text("0::/system.slice/run-1.scope/inner\n")
    scope = version2 / "system.slice" / "run-1.scope"
    (scope / "inner").mkdir(parents=True)
    (scope / "memory.max").write_text(f"{3 * memory.GIB}\n")
    (scope / "memory.current").write_text(f"{memory.GIB}\n")
    assert memory.available(str(meminfo), str(version2), str(nested))[0] == 2 * memory.GIB
    version1 = tmp_path / "v1" / "memory"
    version1.mkdir(parents=True)
    (version1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory.available(str(meminfo), str(tmp_path / "v1"), str(at_root)) == (8 * memory.GIB, "of RAM available")
    (version1 / "memory.limit_in_bytes").write_text(f"{2 * memory.GIB}\n")
    (version1 / "memory.usage_in_bytes").write_text(f"{memory.GIB // 2}\n")
    assert memory.available(str(meminfo), str(tmp_path / "v1"), str(at_root))[0] == memory.GIB * 3 // 2


def test_tags_name_the_options_the_readme_says():
    assert set(config.names_tagged("display")) == {"show", "rows", "cols", "gallery", "grid_per_class", "verbose",
                                                    "worker_wait"}
    assert set(config.names_tagged("worker_local")) == {"image_dir", "labels_csv", "reader", "weights"}
    # --publish too: where a run goes, not how it trains (a resumed run takes it from its own command line).
    assert set(config.names_tagged("run_locator")) == {"resume", "artifacts_dir", "publish"}
    assert {"image_dir", "results_dir", "labels_csv", "weights"} == set(config.names_tagged("path"))


def test_first_different_compares_paths_as_real_paths_and_leaves_out_tags(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    saved = config.saved_options(dataclasses.replace(config.DEFAULTS, image_dir=str(data), epochs=5))

    assert config.first_different({"image_dir": str(tmp_path / "link")}, saved, ()) is None
    assert config.first_different({"epochs": 6}, saved, ()) == ("epochs", 6, 5)
    assert config.first_different({"rows": 4, "epochs": 5}, saved, ("display",)) is None
    assert config.first_different({"rows": 4}, saved, ()) == ("rows", 4, 2)
    assert config.first_different({"artifacts_dir": "elsewhere"}, saved, ("run_locator",)) is None


def test_given_options_are_the_ones_on_the_command_line():
    given = config.given_options(main_script.build_parser(), ["--epochs", "3", "--show=0", "--resume"])
    assert given == {"epochs": 3, "show": "0", "resume": "last"}


def test_saved_options_are_main_pys_and_the_demo_flag():
    saved = config.saved_options(config.DEFAULTS)
    assert set(saved) == set(config.options_of("main")) | {"demo"}
    assert "model" not in saved and "top_k" not in saved


def test_argparse_mistakes_are_user_errors():
    # Spelled in full or by a declared alias (--lr), never abbreviated.
    with pytest.raises(errors.UserError, match="unrecognized arguments: --learning"):
        main_script.build_parser().parse_args(["--learning", "0.1"])
    with pytest.raises(errors.UserError, match="invalid choice"):
        main_script.build_parser().parse_args(["--augment", "2"])
    with pytest.raises(errors.UserError, match="epochs must be an integer. Received: epochs=ten"):
        main_script.build_parser().parse_args(["--epochs", "ten"])


def test_a_read_only_results_dir_is_refused_before_anything_starts(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real_access(path, mode))
    args = PARSERS["main"]().parse_args(["--results_dir", str(tmp_path / "results")])
    with pytest.raises(errors.UserError, match=f"results_dir must be a folder you can write to; {tmp_path} is read-only"):
        config.validate(config.config_from_args(args), "main")


KNOWN = ["--image_dir", "--image_size", "--batch_size", "--learning_rate", "--gallery", "--epochs",
         "--fine_tune_epochs", "--fine_tune_layers", "--labels_csv", "--label_column"]


@pytest.mark.parametrize("typed, meant", [
    ("--lr", ("--learning_rate",)),                # initials, never the far --gallery
    ("--lr=0.01", ("--learning_rate",)),
    ("--learn", ("--learning_rate",)),             # a prefix
    ("--fine_epochs", ("--fine_tune_epochs",)),    # words abbreviated
    ("--fine", ("--fine_tune_epochs", "--fine_tune_layers")),
    ("--imagedir", ("--image_dir",)),              # close spellings
    ("--gallary", ("--gallery",)),
    ("--epoch", ("--epochs",)),
    ("--bs", ("--batch_size",)),
    ("--colour", ()),                              # nothing close: no guess
])
def test_a_mistyped_option_gets_the_option_it_meant(typed, meant):
    assert config.option_guesses(typed, KNOWN) == meant


def test_an_unknown_option_names_its_guess_in_one_line():
    with pytest.raises(errors.UserError, match=r"unrecognized arguments: --epoch 3 \(did you mean --epochs\?\)"):
        main_script.build_parser().parse_args(["--epoch", "3"])
    with pytest.raises(errors.UserError) as raised:
        main_script.build_parser().parse_args(["--colour", "red"])
    assert "did you mean" not in str(raised.value)


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_help_leads_with_a_short_usage_and_the_examples_then_the_groups(script):
    text = PARSERS[script]().format_help()
    lines = text.splitlines()
    assert lines[0].startswith("usage: ") and not lines[1].strip()  # one line of usage
    examples = text.index("examples:")
    assert examples < text.index("options:") < text.index(config.GROUPS[0] + ":") or script == "app"
    shown = [line for line in text[examples:text.index("options:")].splitlines()[1:] if line.strip()]
    assert 2 <= len(shown) <= 4


def test_a_folder_of_unlabelled_images_is_refused_before_tensorflow_with_the_way_to_predict(tmp_path, capsys):
    folder = make_flat_dataset(tmp_path / "data", per_class=3)
    loose = tmp_path / "new_images"
    loose.mkdir()
    for number, name in enumerate(sorted(os.listdir(os.path.join(folder, "cat")))):
        os.rename(os.path.join(folder, "cat", name), loose / f"{number}.png")

    assert main_script.main(["--image_dir", str(loose), "--results_dir", str(tmp_path / "res")]) == 2
    error = one_line_error(capsys)
    assert "3 image(s) and no class folders" in error and f"predict.py --images {loose}" in error
    assert not (tmp_path / "res").exists()
    # Class folders, even with loose files beside them, are not refused here.
    dataset_files.check_labelled_folder(folder)
