"""Write scikit-learn's digits as batches of marker scans: the showcase's data source.

    python notebooks/make_marker_batches.py OUT_DIR [--batches 4] [--first 0] [--count N]
                                            [--shuffle-labels]

Each batch is ``OUT_DIR/batch-NNN.npz`` with ``images`` (n, 8, 8; pixel values 0-16)
and ``labels`` (n,), no pickles. The digits are shuffled once (seed 0) and cut into
``--batches`` equal parts; ``--first``/``--count`` choose which parts to write, so
a test or a demo can drop "new data" into the folder one batch at a time. Written
aside and renamed in: a watcher never sees half a batch. ``--shuffle-labels`` writes
the labels in a random order (seed 1): data gone wrong, for a model that must never
reach production (the delivery rehearsal's broken candidate).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def write_batches(out: Path, batches: int = 4, first: int = 0, count: int | None = None,
                  shuffle_labels: bool = False) -> list[Path]:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    labels = digits.target[np.random.default_rng(1).permutation(len(digits.target))] \
        if shuffle_labels else digits.target
    parts = np.array_split(order, batches)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n in range(first, min(batches, first + (count or batches))):
        target = out / f"batch-{n:03d}.npz"
        tmp = out / f".batch-{n:03d}.{os.getpid()}.npz"
        np.savez(tmp, images=digits.images[parts[n]], labels=labels[parts[n]])
        os.replace(tmp, target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--shuffle-labels", action="store_true",
                        help="labels in a random order: a model trained on them is broken")
    args = parser.parse_args()
    for path in write_batches(args.out, args.batches, args.first, args.count,
                              args.shuffle_labels):
        print(path)


if __name__ == "__main__":
    main()
