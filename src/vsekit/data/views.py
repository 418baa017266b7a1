"""Views of an image (its rotations and mirror images) and the feature files that hold them.

``vsekit extract --views`` stores the features of each view beside the image's own (``{split}_ims.{view}.npy``);
training can draw a view in place of the image (``data.train_views``) and evaluation and indexing average the
embeddings over views (``data.eval_views``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import ConfigError

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rot90": lambda x: x.rot90(1, (2, 3)),
    "rot180": lambda x: x.rot90(2, (2, 3)),
    "rot270": lambda x: x.rot90(3, (2, 3)),
    "hflip": lambda x: x.flip(3),
    "vflip": lambda x: x.flip(2),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: x.rot90(2, (2, 3)).transpose(2, 3),
}
"""Views of an image, applied to the normalised B×3×H×W network input (rotations counter-clockwise; ``transpose``
mirrors about the main diagonal, ``antitranspose`` about the other one). With the image itself they are the
eight symmetries of a square. Aerial and other top-down images have no canonical orientation, so each of them
is an equally valid view."""


def check_views(views: Sequence[str], field: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``field`` if a view is not one of :data:`VIEWS`."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ConfigError(f"{field}: unknown view {unknown[0]!r} (known: {', '.join(VIEWS)})")


def view_file(split: str, view: str | None = None) -> str:
    """The feature file name of a split (``view=None``) or of one of its :data:`VIEWS`."""
    return f"{split}_ims.npy" if view is None else f"{split}_ims.{view}.npy"
