"""Datasets that ship inside the package, so that training needs no download.

Only the UCI optical handwritten digits for now (CC BY 4.0; attribution and format in
``DIGITS.rst`` beside this file). Nothing is read at import time.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

__all__ = ["DIGITS_CLASSES", "DIGITS_FEATURES", "describe_digits", "load_digits"]

DIGITS_FEATURES = 64  # 8x8 pixels
DIGITS_CLASSES = 10  # the digits 0..9


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read the embedded digits: ``(pixels, labels)``.

    ``pixels`` is float32 of shape (1797, 64), integer values 0..16 (not scaled);
    ``labels`` is int64 of shape (1797,), values 0..9, in file order. Blocks on reading a
    57 kB packaged file (a few milliseconds); raises OSError only for a broken install.
    """
    resource = resources.files(__name__).joinpath("digits.csv.gz")
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    return table[:, :DIGITS_FEATURES].astype(np.float32), table[:, DIGITS_FEATURES].copy()


def describe_digits() -> str:
    """Return ``DIGITS.rst``: the dataset's description, source and license (CC BY 4.0)."""
    return resources.files(__name__).joinpath("DIGITS.rst").read_text(encoding="utf-8")
