"""--image_size auto: the backbone's own size with pretrained weights, the
training images' size from scratch, printed with the reason and saved."""

import pytest

import backbones
import config
import main as main_script
from conftest import one_line_error, read_json
from errors import UserError


def sizes(width, height=None):
    height = height or width
    return {"width": float(width), "height": float(height), "short_side": float(min(width, height))}


@pytest.mark.parametrize("train_size, expected", [
    (sizes(64), 64),
    (sizes(25), 32),      # faces at 25x25: the smallest size, not an upscale past it
    (sizes(100), 96),     # the nearest multiple of 32
    (sizes(500, 375), 224),  # photos: at most 224 from scratch
    (sizes(4000), 224),
])
def test_from_scratch_the_size_is_the_training_images_median_as_a_multiple_of_32(train_size, expected):
    size, reason = backbones.automatic_image_size("mobilenet_v2", False, train_size)
    assert size == expected
    assert f"training at {size} px" in reason
    assert "from scratch" in reason


def test_pretrained_the_size_is_the_one_the_weights_were_trained_at():
    assert backbones.automatic_image_size("mobilenet_v2", True, sizes(64))[0] == 224
    assert backbones.automatic_image_size("inception_v3", True, sizes(64))[0] == 299
    assert backbones.automatic_image_size("efficientnetv2_s", True, None)[0] == 384
    # From scratch a backbone's smallest input still holds (Inception needs 75).
    assert backbones.automatic_image_size("inception_v3", False, sizes(32))[0] == 75
    assert all("native_size" in family for family in backbones.BACKBONES.values())


def test_auto_is_the_default_and_parses_as_a_word_or_a_number(tmp_path, capsys):
    parser = main_script.build_parser()
    assert parser.parse_args([]).image_size == "auto"
    assert parser.parse_args(["--image_size", "AUTO"]).image_size == "auto"
    assert parser.parse_args(["--image_size", "96"]).image_size == 96
    options = config.config_from_args(parser.parse_args(["--weights", "none"]))
    assert config.validate(options, "main") is options  # nothing to check yet from scratch
    with pytest.raises(UserError, match="image_size must be an integer"):
        parser.parse_args(["--image_size", "big"])
    code = main_script.main(["--image_size", "16", "--artifacts_dir", str(tmp_path / "art")])
    assert code == 2 and one_line_error(capsys).startswith("error: image_size must be at least 32")


@pytest.mark.slow
def test_a_folder_of_64px_images_from_scratch_trains_at_64px_and_says_why(recipe_run):
    assert "image size 64 px (--image_size auto): the training images are 64x64 px (median)" in recipe_run["printed"]
    run_config = read_json(recipe_run["artifacts"] / "run_config.json")  # the published run's
    assert run_config["image_size"] == 64
    assert run_config["options"]["image_size"] == 64  # a resumed run keeps the number
