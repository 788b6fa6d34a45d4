"""Write scikit-learn's digits as batches of marker scans: the showcase's data source.

    python notebooks/make_marker_batches.py OUT_DIR [--batches 4] [--first 0] [--count N]

Each batch is ``OUT_DIR/batch-NNN.npz`` with ``images`` (n, 8, 8; pixel values 0-16)
and ``labels`` (n,), no pickles. The digits are shuffled once (seed 0) and cut into
``--batches`` equal parts; ``--first``/``--count`` choose which parts to write, so
a test or a demo can drop "new data" into the folder one batch at a time. Written
aside and renamed in: a watcher never sees half a batch.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def write_batches(out: Path, batches: int = 4, first: int = 0, count: int | None = None
                  ) -> list[Path]:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    parts = np.array_split(order, batches)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n in range(first, min(batches, first + (count or batches))):
        target = out / f"batch-{n:03d}.npz"
        tmp = out / f".batch-{n:03d}.{os.getpid()}.npz"
        np.savez(tmp, images=digits.images[parts[n]], labels=digits.target[parts[n]])
        os.replace(tmp, target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    for path in write_batches(args.out, args.batches, args.first, args.count):
        print(path)


if __name__ == "__main__":
    main()
