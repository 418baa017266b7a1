"""Named config presets: the papers' recipes and the built-in demo.

>>> from vsekit.presets import get_preset, list_presets
>>> "vse_infty_region_bigru" in list_presets()
True
>>> get_preset("vse_infty_region_bigru").loss.warmup_epochs
1

The presets are data: one YAML recipe per preset in ``vsekit/recipes/`` (shipped inside the package), with
where each value comes from in its comments. A recipe holds a ``description``, optionally a ``base`` recipe,
and ``config``: the fields that differ from its base (or from the :class:`~vsekit.config.TrainConfig`
defaults). Mappings of config sections merge field by field; every other value, lists and dicts such as
``optim.lr_mults`` included, replaces the base's. Python code can add presets with :func:`register_preset`.
Paths are never part of a preset: set ``data.path`` in a config file or with an override.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from importlib import resources
from typing import Any, Callable

import yaml

from .config import TrainConfig, from_dict, to_dict
from .errors import ConfigError

RECIPES = "recipes"
"""The folder of the package that holds the YAML recipes."""

_REGISTERED: dict[str, tuple[Callable[[], TrainConfig], str]] = {}


def register_preset(name: str, description: str) -> Callable[[Callable[[], TrainConfig]], Callable[[], TrainConfig]]:
    """Decorator registering a function that returns a fresh :class:`TrainConfig` as preset ``name``."""

    def wrap(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
        if name in _REGISTERED or name in _recipes():
            raise ValueError(f"preset {name!r} is already registered")
        _REGISTERED[name] = (fn, description)
        return fn

    return wrap


@functools.cache
def _recipes() -> dict[str, dict[str, Any]]:
    """Every recipe file of the package, read once: name -> its YAML mapping."""
    out = {}
    for entry in resources.files("vsekit").joinpath(RECIPES).iterdir():
        if entry.name.endswith(".yaml"):
            recipe = yaml.safe_load(entry.read_text(encoding="utf-8"))
            if not isinstance(recipe, dict) or not isinstance(recipe.get("config"), dict) or "description" not in recipe:
                raise ConfigError(f"{RECIPES}/{entry.name}: expected a mapping with 'description' and 'config'")
            out[entry.name[: -len(".yaml")]] = recipe
    return out


def merge_sections(cls: type, base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    """``base`` with ``update`` applied: fields of dataclass ``cls`` that are config sections (dataclasses) merge
    recursively, every other field is replaced.

    Raises:
        ConfigError: naming ``where.field`` for a field ``cls`` does not have.
    """
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in update.items():
        if key not in hints:
            raise ConfigError(f"{where}.{key}: unknown field")
        section = hints[key]
        if dataclasses.is_dataclass(section) and isinstance(value, dict):
            out[key] = merge_sections(section, base[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _resolve(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The full config dict of recipe ``name``, its bases applied first."""
    if name in chain:
        raise ConfigError(f"{RECIPES}/{name}.yaml: its bases form a cycle ({' -> '.join([*chain, name])})")
    recipe = _recipes()[name]
    base = recipe.get("base")
    start = _resolve(base, (*chain, name)) if base else to_dict(TrainConfig())
    return merge_sections(TrainConfig, start, recipe["config"], f"{RECIPES}/{name}.yaml: config")


def get_preset(name: str) -> TrainConfig:
    """A fresh config of preset ``name``."""
    if name in _REGISTERED:
        return _REGISTERED[name][0]()
    if name not in _recipes():
        raise ConfigError(f"preset {name!r}: unknown (known: {', '.join(list_presets())})")
    return from_dict(TrainConfig, _resolve(name), f"preset {name}")


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    found = {name: str(recipe["description"]) for name, recipe in _recipes().items()}
    found.update({name: desc for name, (_, desc) in _REGISTERED.items()})
    return dict(sorted(found.items()))
