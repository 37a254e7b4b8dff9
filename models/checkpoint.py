"""Strict loading of weights files: one loader for the segmenter, the classifier and the store.

Every network of this package loads its weights the same way, segment-anything's
``build_sam.py`` habit: the file is read **on the CPU first** (``torch.load(map_location="cpu",
weights_only=True)``, so that no pickled code runs and a CUDA-saved file loads on a CPU-only
host), it must be a plain state dict (parameter name -> tensor), and it is loaded **strictly,
keys unchanged**. A file that does not fit is refused with :class:`CheckpointError` naming the
file, the network it was meant for, and the missing, unexpected or mis-shaped keys; the caller
moves the module to its device afterwards.

Floating-point tensors stored in a narrower type (the demo models keep float16 to halve the
files) are cast to the network's own dtype by ``nn.Module.load_state_dict``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: How many missing/unexpected keys an error message lists before it says "and N more".
KEYS_SHOWN = 12


class CheckpointError(ValueError):
    """A weights file that is unreadable, not a plain state dict, or does not fit its network."""


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:KEYS_SHOWN])
    more = len(keys) - KEYS_SHOWN
    return shown + (f" ... and {more} more" if more > 0 else "")


def read_state_dict(path: Path, *, kind: str = "model") -> dict[str, torch.Tensor]:
    """Read a plain state dict file on the CPU without running pickled code.

    Parameters
    ----------
    path : the weights file (``torch.save(module.state_dict(), path)``).
    kind : what the file holds (``"segmenter"``, ``"classifier"``), for the messages.

    Returns
    -------
    dict of parameter and buffer name -> tensor, on the CPU, dtypes as stored.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    CheckpointError
        When the file is not a torch archive, or holds something other than a plain state dict
        (e.g. a training checkpoint ``{"model": ..., "step": ...}``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        # torch reports a truncated zip as RuntimeError, foreign bytes as UnpicklingError
        raise CheckpointError(f"{kind} checkpoint {path} could not be read as a torch state dict: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(
            f"{kind} checkpoint {path} is not a plain state dict (name -> tensor); export the network's "
            "state_dict() (training checkpoints hold more)"
        )
    return state


def load_state_dict_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: Path, target: str, kind: str = "model"
) -> None:
    """Load ``state`` into ``module`` strictly, after naming every key that does not fit.

    Parameters
    ----------
    module : the freshly built network (on the CPU).
    state : its state dict, e.g. from :func:`read_state_dict`.
    source : the file ``state`` came from, named in the error.
    target : the network it should fit, e.g. ``"architecture 'sam_tiny'"`` or
        ``"a 'cxr_tiny' classifier"``, named in the error.
    kind : what the file holds, for the message.

    Raises
    ------
    CheckpointError
        When keys are missing or unexpected, or a tensor's shape differs; the message lists them
        (the first :data:`KEYS_SHOWN` of each) with their counts, and names ``source``.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches ({len(mis_shaped)}): {_list_keys(mis_shaped)}")
        raise CheckpointError(
            f"{kind} checkpoint {source} does not fit {target}: "
            + "; ".join(parts)
            + ". Keys are loaded unchanged: pick the architecture the checkpoint was saved from."
        )
    module.load_state_dict(state, strict=True)


def load_checkpoint_strict(module: nn.Module, path: Path, *, target: str, kind: str = "model") -> dict[str, torch.Tensor]:
    """Read ``path`` on the CPU (:func:`read_state_dict`) and load it strictly into ``module``.

    Returns the state dict as read (dtypes as stored), for checks beyond the keys. Raises what
    :func:`read_state_dict` and :func:`load_state_dict_strict` raise.
    """
    state = read_state_dict(path, kind=kind)
    load_state_dict_strict(module, state, source=Path(path), target=target, kind=kind)
    logger.debug("loaded %s weights %s into %s", kind, path, target)
    return state
