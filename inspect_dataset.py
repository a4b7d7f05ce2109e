"""Inspect a dataset without training: the layout found, the audit of every
file and the train/val/test split, as main.py would make them.

    python inspect_dataset.py --image_dir DIR            # summary: skipped files, split table, warnings
    python inspect_dataset.py --image_dir DIR --json     # exactly one JSON object on stdout
"""

import json
import sys

import artifacts
import audit
import config
import console
import errors
import image_io
import option_types
import splits
from errors import UserError

DESCRIPTION = (
    "Inspect a dataset without training: layout detection, the audit of every file, "
    "and the train/val/test split."
)

EXAMPLES = """\
  python inspect_dataset.py --image_dir photos/                # layout, skipped files, the split
  python inspect_dataset.py --image_dir photos/ --json         # the same as one JSON object
"""


def build_parser():
    """inspect_dataset.py's command line (config.build_parser, from the one option table)."""
    return config.build_parser("inspect", DESCRIPTION, EXAMPLES)


def inspect(argv=None):
    """Runs the audit and split of `--image_dir` and prints them; returns
    the splits.DatasetIndex."""
    options = config.validate(config.config_from_args(build_parser().parse_args(argv)), "inspect")
    if not options.image_dir:
        raise UserError("image_dir is required. Received: image_dir=None")
    option_types.check_outside("artifacts_dir", options.artifacts_dir, options.image_dir)
    console.start_tensorflow(options.verbose)
    index = splits.index_source(config.picked(options, splits.Source), progress=audit.ProgressLine())
    if options.json:
        print(json.dumps(audit.inspection_summary(index), ensure_ascii=False))
        return index
    print(f"Dataset: {image_io.display_path(index.root)}")
    for line in audit.summary_lines(index, max_skipped=50, where="--json"):
        print(f"    {line}")
    for line in audit.near_copy_group_lines(index):
        print(f"    {line}")
    print(f"    audit cache: {audit.audit_cache_path(artifacts.audit_cache_dir(options.artifacts_dir), index.root)}")
    return index


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return errors.run_cli(inspect, argv)


if __name__ == "__main__":
    sys.exit(main())
