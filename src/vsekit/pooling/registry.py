"""The pooling registry: a name (``model.image.pooling``, ``model.text.pooling``) builds a pooling module."""

from __future__ import annotations

import re
from typing import Callable, TypeVar

from torch import Tensor, nn

from vsekit.errors import ConfigError

from .sets import Lengths


class SetPooling(nn.Module):
    """Base class of the poolings: ``forward(features, lengths) -> (pooled B×D, weights B×L)``."""

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str | None]] = {}


def register_pooling(
    name: str, *aliases: str, suffix_arg: str | None = None
) -> Callable[[_Factory], _Factory]:
    """Class decorator registering a pooling factory under ``name`` (and ``aliases``).

    Args:
        name: registry name (lower case).
        aliases: extra names for the same factory.
        suffix_arg: keyword argument filled by an integer suffix, so that ``"kmax:5"`` and
            ``"kmax-5"`` mean ``create_pooling("kmax", k=5)``.
    """

    def decorate(factory: _Factory) -> _Factory:
        for key in (name, *aliases):
            if key in _REGISTRY:
                raise ConfigError(f"pooling {key!r} is already registered")
            _REGISTRY[key] = (factory, suffix_arg)
        return factory

    return decorate


def list_poolings() -> list[str]:
    """Names accepted by :func:`create_pooling` (aliases included), sorted."""
    return sorted(_REGISTRY)


def create_pooling(name: str, **kwargs: object) -> nn.Module:
    """Build a pooling by name: ``"gpo"``, ``"mean"`` (alias ``"avg"``), ``"max"``, ``"kmax"``.

    ``"kmax:5"`` / ``"kmax-5"`` is short for ``create_pooling("kmax", k=5)``.

    Raises:
        ConfigError: for an unknown name or invalid arguments.
    """
    key = str(name).strip().lower()
    suffix = None
    match = re.fullmatch(r"([a-z_]+)[:\-](\d+)", key)
    if match and match.group(1) in _REGISTRY:
        key, suffix = match.group(1), int(match.group(2))
    if key not in _REGISTRY:
        raise ConfigError(f"unknown pooling {name!r}; known: {', '.join(list_poolings())}")
    factory, suffix_arg = _REGISTRY[key]
    if suffix is not None:
        if suffix_arg is None:
            raise ConfigError(f"pooling {key!r} takes no numeric suffix, got {name!r}")
        if suffix_arg in kwargs:
            raise ConfigError(f"pooling {name!r} sets {suffix_arg} twice")
        kwargs[suffix_arg] = suffix
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid arguments for pooling {key!r}: {exc}") from exc
