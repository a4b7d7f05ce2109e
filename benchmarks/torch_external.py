"""A PyTorch model in the comparison, proved to the image: trained in
PyTorch, exported to ONNX with its sidecar, scored beside a run of ours.

    pip install torch==2.13.0 onnxscript      # for this script only: not requirements of the tool
    python benchmarks/make_photos.py --out /tmp/ext_photos --count 400 --halves
    python main.py --image_dir /tmp/ext_photos --weights none --image_size 64 --epochs 12 --show 0
    python benchmarks/torch_external.py --image_dir /tmp/ext_photos --out /tmp/ext_model

Takes the run (the last finished one of --artifacts_dir, or --run ID) and
its split_manifest.csv, trains a small CNN in PyTorch on the run's train
split (its val split picks the best epoch), exports it with
torch.onnx.export (NCHW float input, ImageNet mean/std on 0-1 = the
sidecar's "torch" preprocessing, logits out) to OUT/photo_cnn.onnx and
writes its sidecar OUT/photo_cnn.json, the classes in reverse order so that
matching by name is exercised. Then:

1. PyTorch's own accuracy on the run's test images, the model run in
   PyTorch on the pixels image_io decodes (the one decode path the tool
   feeds every model), preprocessed in PyTorch;
2. evaluate.py --compare RUN --external OUT/photo_cnn.onnx, whose
   model_comparison.csv must give the ONNX model that accuracy on the same
   number of images, to the image;
3. image by image: inference.py's predictions for the ONNX model against
   PyTorch's (and the largest probability difference).

Also printed: PyTorch's accuracy when it reads the images its own way (PIL,
bilinear resize), to show what the decoder alone changes. Exits 1 when the
parity does not hold.
"""

import argparse
import csv
import glob
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# What the sidecar's "torch" preprocessing is (external.PREPROCESSING).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MODEL_NAME = "photo_cnn"


# ---------------------------------------------------------------- the run's split


def run_split(artifacts_dir, run_id, image_dir):
    """(run folder, image size, {split: [(absolute path, class name)]}) of
    the run: the one named, or the last finished (ARTIFACTS_DIR/latest)."""
    import artifacts

    run_id = run_id or artifacts.published_run(artifacts_dir)
    if not run_id:
        sys.exit(f"no finished run in {artifacts_dir}: train one with main.py first (see the docstring)")
    folder = os.path.join(artifacts.runs_folder(artifacts_dir), run_id)
    saved = artifacts.read_run_config(folder)
    if os.path.realpath(saved.get("image_dir") or "") != os.path.realpath(image_dir):
        sys.exit(f"run {run_id} was trained on {saved.get('image_dir')}, not on {image_dir}")
    splits = {"train": [], "val": [], "test": []}
    for row in artifacts.read_manifest(folder):
        splits[row.split].append((os.path.join(os.path.abspath(image_dir), row.path), row.label))
    return folder, int(saved["image_size"]), splits


def decoded(items, image_size):
    """uint8 (N, S, S, 3) of the files, decoded by image_io.load_image: the
    pixels evaluate.py feeds every model."""
    import image_io

    return np.stack([image_io.load_image(path, image_size).numpy() for path, _ in items])


def pil_decoded(items, image_size):
    """The same files read the way a PyTorch script usually reads them: PIL,
    RGB, bilinear resize."""
    from PIL import Image

    images = []
    for path, _ in items:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)))
    return np.stack(images)


# ---------------------------------------------------------------- PyTorch


def build_cnn(classes):
    """Four conv-BN-ReLU-pool blocks, global average pooling, a linear
    layer: about 100 k weights."""
    import torch.nn as nn

    def block(inputs, outputs):
        return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 16), *block(16, 32), *block(32, 64), *block(64, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, classes),
    )


def torch_input(images):
    """uint8 NHWC -> float NCHW, ImageNet mean/std on 0-1, in PyTorch
    (torchvision's ToTensor + Normalize, which this avoids installing)."""
    import torch

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def torch_logits(model, images, batch_size=64):
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch_input(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def train(model, train_images, train_labels, val_images, val_labels, epochs, seed):
    """Adam, cross-entropy, random horizontal shifts of up to 4 px; returns
    the weights of the epoch with the lowest validation loss."""
    import torch
    import torch.nn.functional as functional

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    labels = torch.from_numpy(train_labels).long()
    best, best_loss = None, float("inf")
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_images), generator=generator).numpy()
        for first in range(0, len(order), 32):
            chosen = order[first:first + 32]
            batch = torch_input(train_images[chosen])
            shift = int(torch.randint(-4, 5, (1,), generator=generator))
            batch = torch.roll(batch, shifts=shift, dims=3)
            loss = functional.cross_entropy(model(batch), labels[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_logits = torch_logits(model, val_images)
        val_loss = float(functional.cross_entropy(val_logits, torch.from_numpy(val_labels).long()))
        val_accuracy = float((val_logits.argmax(1).numpy() == val_labels).mean())
        print(f"    epoch {epoch}: val_loss {val_loss:.4f}, val_accuracy {val_accuracy:.4f} "
              f"({time.perf_counter() - start:.1f}s)")
        if val_loss < best_loss:
            best_loss, best = val_loss, {name: value.clone() for name, value in model.state_dict().items()}
    model.load_state_dict(best)
    return model


def export_onnx(model, image_size, path):
    """torch.onnx.export, batch size free: the exporter PyTorch uses by
    default (torch.export, needs onnxscript), or the TorchScript one without
    it. Returns the exporter's name."""
    import torch

    model.eval()
    example = (torch.zeros(2, 3, image_size, image_size),)
    names = {"input_names": ["image"], "output_names": ["logits"]}
    try:
        import onnxscript  # noqa: F401 - the default exporter's dependency

        torch.onnx.export(model, example, path, dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, **names)
        return "torch.export (dynamo)"
    except ImportError:
        torch.onnx.export(model, example, path, dynamo=False, dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          **names)
        return "TorchScript (onnxscript not installed)"


# ---------------------------------------------------------------- the comparison


def compare(image_dir, run_folder, onnx_path, artifacts_dir, results_dir):
    """evaluate.py --compare RUN --external ONNX; returns the CSV's rows."""
    import evaluate

    code = evaluate.main([
        "--image_dir", image_dir, "--compare", os.path.basename(run_folder), "--external", onnx_path,
        "--artifacts_dir", artifacts_dir, "--results_dir", results_dir, "--show", "0",
    ])
    if code != 0:
        sys.exit(f"evaluate.py --compare failed (exit {code})")
    newest = max(glob.glob(os.path.join(results_dir, "model_comparison", "*", "model_comparison.csv")),
                 key=os.path.getmtime)
    with open(newest, newline="", encoding="utf-8") as handle:
        return newest, list(csv.DictReader(handle))


def onnx_predictions(onnx_path, test, batch_size):
    """inference.py's probabilities for the ONNX model on the test images,
    in their order (the model's own class order)."""
    import inference

    trained = inference.load_trained_model(onnx_path)
    ids = {name: number for number, name in enumerate(trained.class_names)}
    images = inference.LabelledImages([path for path, _ in test], np.array([ids[name] for _, name in test]), "test")
    evaluation = inference.evaluate_images(trained, images, batch_size)
    assert list(evaluation.paths) == images.paths, "an image could not be read"
    return evaluation.probabilities


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_dir", required=True, help="The folder the run was trained on")
    parser.add_argument("--out", required=True, help="Folder for photo_cnn.onnx and photo_cnn.json")
    parser.add_argument("--artifacts_dir", default="model_artifacts")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--run", default=None, help="Run id (default: the last finished run)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch
    import torch.nn.functional as functional

    torch.manual_seed(args.seed)
    run_folder, image_size, splits = run_split(args.artifacts_dir, args.run, args.image_dir)
    # The model's output order: the dataset's classes reversed.
    classes = sorted({name for items in splits.values() for _, name in items}, reverse=True)
    ids = {name: number for number, name in enumerate(classes)}
    print(f"run {os.path.basename(run_folder)}: {image_size} px, "
          + ", ".join(f"{split} {len(items)}" for split, items in splits.items()) + f" images; classes {classes}")
    arrays = {split: (decoded(items, image_size), np.array([ids[name] for _, name in items]))
              for split, items in splits.items()}

    print(f"training a CNN in PyTorch {torch.__version__} on the run's train split ({torch.get_num_threads()} threads)")
    start = time.perf_counter()
    model = train(build_cnn(len(classes)), *arrays["train"], *arrays["val"], args.epochs, args.seed)
    training_seconds = time.perf_counter() - start
    parameters = sum(parameter.numel() for parameter in model.parameters())

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{MODEL_NAME}.onnx")
    exporter = export_onnx(model, image_size, onnx_path)
    sidecar = {"classes": classes, "preprocessing": "torch", "output": "logits", "name": "PyTorch CNN"}
    with open(os.path.join(args.out, f"{MODEL_NAME}.json"), "w", encoding="utf-8") as handle:
        json.dump(sidecar, handle, indent=2)
    print(f"exported with {exporter}: {onnx_path} ({os.path.getsize(onnx_path) / 1024:.0f} KB), sidecar {sidecar}")

    test_images, test_labels = arrays["test"]
    logits = torch_logits(model, test_images)
    torch_predicted = logits.argmax(1).numpy()
    torch_correct = int((torch_predicted == test_labels).sum())
    pil_predicted = torch_logits(model, pil_decoded(splits["test"], image_size)).argmax(1).numpy()
    pil_correct = int((pil_predicted == test_labels).sum())

    csv_path, rows = compare(args.image_dir, run_folder, onnx_path, args.artifacts_dir, args.results_dir)
    (row,) = [row for row in rows if row["source"] == "external"]
    compared_images = int(row["test_images"])
    compared_correct = round(float(row["test_accuracy"]) * compared_images)

    probabilities = onnx_predictions(onnx_path, splits["test"], 32)
    disagree = int((probabilities.argmax(1) != torch_predicted).sum())
    difference = float(np.abs(probabilities - functional.softmax(logits.double(), dim=1).numpy()).max())

    count = len(test_labels)
    print()
    print(f"PyTorch CNN: {parameters:,} weights, trained {training_seconds:.0f}s ({args.epochs} epochs)")
    print(f"PyTorch's own accuracy on the run's {count} test images: {torch_correct}/{count} = {torch_correct / count:.4f}")
    print(f"the comparison's accuracy for the ONNX model:        {compared_correct}/{compared_images} = "
          f"{float(row['test_accuracy']):.4f}   ({csv_path})")
    print(f"image by image (inference.py vs PyTorch): {disagree} of {count} predictions differ, "
          f"largest probability difference {difference:.1e}")
    print(f"PyTorch reading the images with PIL instead of image_io: {pil_correct}/{count} = {pil_correct / count:.4f} "
          f"({int((pil_predicted != torch_predicted).sum())} predictions change)")
    for other in rows:
        print(f"    {other['rank']}. {other['backbone']} ({other['source']}, {other['run']}): accuracy "
              f"{float(other['test_accuracy']):.4f}, {float(other['inference_ms_per_image']):.2f} ms/image")
    same = compared_images == count and compared_correct == torch_correct and disagree == 0
    print("parity: " + ("the same to the image" if same else "DIFFERS"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
