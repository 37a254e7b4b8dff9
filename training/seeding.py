"""Seeding of every random number generator a training run draws from.

One function, used by every training loop, so that a run's randomness is fixed by its seed alone.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's legacy global generator and torch (CPU and CUDA).

    Parameters
    ----------
    seed : int
        Any integer; NumPy takes it modulo ``2**32`` (its seed range), Python and torch as is.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
