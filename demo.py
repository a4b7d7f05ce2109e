"""The built-in demo: what `python main.py` trains on when no --image_dir is
given, and with which settings.

scikit-learn's 1,797 bundled 8x8 handwritten digit scans (real scans, 10
classes) are written once as PNG class folders under data/demo_digits/
and trained on from scratch at 32 px (see README, "Set up and run", for
what it measures).
"""

import os
import shutil
import tempfile

from errors import UserError

DEMO_DIR = os.path.join("data", "demo_digits")
# The demo's defaults; any option given on the command line still wins.
DEMO_OVERRIDES = {
    "weights": "none",
    "image_size": 32,
    "epochs": 30,
    "batch_size": 32,
    "augment": 0,
    "patience": 8,
    "learning_rate": 2e-3,
}


def write_demo_dataset(folder):
    """Writes scikit-learn's 1,797 bundled 8x8 digit scans as PNG class
    folders (dark ink on white), once. Returns the folder. Raises UserError
    when `folder` exists but is not a complete demo dataset (it is never
    deleted)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if os.path.isfile(os.path.join(folder, ".complete")):
        return folder
    if os.path.exists(folder):  # never delete a folder we did not finish writing
        raise UserError(
            f"{folder} exists but is not a complete demo dataset; move it away "
            "to let the demo write it again, or pass --image_dir"
        )
    print(f"Writing the demo dataset (scikit-learn digits) to {folder}", flush=True)
    digits = load_digits()
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".demo-", dir=parent)
    for number, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = (255 - image * (255 / 16)).round().astype(np.uint8)
        class_folder = os.path.join(staging, str(label))
        os.makedirs(class_folder, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(os.path.join(class_folder, f"{number:04d}.png"))
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.replace(staging, folder)  # all or nothing: an interrupted write leaves only the hidden staging folder
    except OSError:
        if not os.path.isfile(os.path.join(folder, ".complete")):
            raise
        shutil.rmtree(staging)  # another process (a second worker on this machine) wrote it first
    return folder
