"""A built-in synthetic image-caption dataset, made in about a second from a seed, with no files.

A fixed random *world* is drawn from the seed: a vector for every object category (``car``, ``tree``,
...), colour (``red``, ...), size (``small``, ``medium``, ``large``) and background type. A scene holds a
random number of objects plus a few background (clutter) regions, in random order. The feature of an object
region is ``vec(category) + vec(colour) + vec(size)`` plus Gaussian noise; every region of a scene also
shares a random per-scene offset. Each caption describes only *some* (1 to ``max_mentions``) of the
objects, in random order, through varied templates and synonyms (``large``/``big``), sometimes leaving out
the colour or size, and groups identical descriptions (``two red cars``).

Retrieval is therefore non-trivial: a caption matches a scene through a few of its many regions. Mean
pooling over the regions blurs the mentioned objects among the others, while max-like pooling (max, GPO)
keeps them, so the dataset shows the benefit of a good pooling operator.

With ``render=True`` the same scenes are drawn as images (shapes for categories, colours, sizes, textured
clutter; :mod:`vsekit.data.render`) for models that read raw pixels; the captions do not change.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vsekit.data.datasets import CaptionDataset, FeatureCaptionDataset
from vsekit.errors import ConfigError

# (singular, plural)
NOUNS: tuple[tuple[str, str], ...] = (
    ("car", "cars"), ("tree", "trees"), ("house", "houses"), ("boat", "boats"), ("dog", "dogs"),
    ("cat", "cats"), ("bird", "birds"), ("horse", "horses"), ("bus", "buses"), ("bicycle", "bicycles"),
    ("chair", "chairs"), ("table", "tables"), ("lamp", "lamps"), ("bottle", "bottles"), ("cup", "cups"),
    ("ball", "balls"), ("kite", "kites"), ("truck", "trucks"), ("bench", "benches"), ("flower", "flowers"),
    ("clock", "clocks"), ("umbrella", "umbrellas"), ("train", "trains"), ("plane", "planes"),
    ("sheep", "sheep"), ("box", "boxes"), ("tower", "towers"), ("bridge", "bridges"),
    ("tent", "tents"), ("rock", "rocks"), ("fence", "fences"), ("sign", "signs"),
)
COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "brown", "pink")
# One tuple of synonyms per size; "medium" objects are described as such or without a size.
SIZES: tuple[tuple[str, ...], ...] = (("small", "little", "tiny"), ("medium",), ("large", "big", "huge"))
_COUNT_WORDS = ("two", "three", "four", "five")
_OPENERS = (
    "", "", "a photo of ", "an image of ", "a picture showing ", "i can see ", "this scene has ",
    "there is ", "we see ", "a view of ",
)
_JOINERS = (" and ", " and ", " next to ", " near ", " beside ", " with ", ", ", " behind ", " in front of ")
_ENDINGS = ("", "", "", " in the scene", " in the picture", " outside", " on the ground")

_SPLITS = ("train", "val", "test")


@dataclass
class SyntheticConfig:
    """Settings of :func:`make_synthetic`.

    Attributes:
        num_train: number of train images.
        num_val: number of validation images.
        num_test: number of test images.
        captions_per_image: captions per image.
        feature_dim: region feature dimension.
        min_objects: fewest objects in a scene.
        max_objects: most objects in a scene.
        min_clutter: fewest background regions in a scene.
        max_clutter: most background regions in a scene.
        num_categories: object categories used (at most ``len(NOUNS)``).
        num_colors: colours used (at most ``len(COLORS)``).
        num_clutter_types: distinct background types.
        min_mentions: fewest objects a caption describes (when the scene has that many).
        max_mentions: most objects a caption describes.
        p_color: probability that a caption gives an object's colour.
        p_size: probability that a caption gives an object's size.
        attribute_scale: norm of a colour or size vector relative to a category vector.
        noise: per-region Gaussian noise norm (relative to a category vector).
        scene_offset: norm of the random offset shared by all regions of a scene.
        seed: seed of the world and of every split.
        render: draw every scene as an image (``image_kind='pixels'``, for raw-image models; see
            :mod:`vsekit.data.render`) instead of making region features. Same scenes and captions.
        image_size: side of the rendered images in pixels (``render`` only).
    """

    num_train: int = 4000
    num_val: int = 500
    num_test: int = 500
    captions_per_image: int = 5
    feature_dim: int = 64
    min_objects: int = 2
    max_objects: int = 16
    min_clutter: int = 1
    max_clutter: int = 4
    num_categories: int = 24
    num_colors: int = 8
    num_clutter_types: int = 8
    min_mentions: int = 2
    max_mentions: int = 4
    p_color: float = 0.9
    p_size: float = 0.4
    attribute_scale: float = 0.8
    noise: float = 0.3
    scene_offset: float = 0.5
    seed: int = 0
    render: bool = False
    image_size: int = 64

    def validate(self) -> None:
        """Raise :class:`~vsekit.errors.ConfigError` naming the first invalid field."""
        positive = ("captions_per_image", "feature_dim", "min_objects", "num_categories", "num_colors",
                    "num_clutter_types", "min_mentions", "max_mentions")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"synthetic.{name}: expected a positive integer, got {value!r}")
        for name in ("num_train", "num_val", "num_test", "min_clutter", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"synthetic.{name}: expected a non-negative integer, got {value!r}")
        if self.max_objects < self.min_objects:
            raise ConfigError(f"synthetic.max_objects: expected >= min_objects={self.min_objects}, "
                              f"got {self.max_objects}")
        if self.max_mentions < self.min_mentions:
            raise ConfigError(f"synthetic.max_mentions: expected >= min_mentions={self.min_mentions}, "
                              f"got {self.max_mentions}")
        if self.max_clutter < self.min_clutter:
            raise ConfigError(f"synthetic.max_clutter: expected >= min_clutter={self.min_clutter}, "
                              f"got {self.max_clutter}")
        if self.num_categories > len(NOUNS):
            raise ConfigError(f"synthetic.num_categories: expected at most {len(NOUNS)}, got {self.num_categories}")
        if self.num_colors > len(COLORS):
            raise ConfigError(f"synthetic.num_colors: expected at most {len(COLORS)}, got {self.num_colors}")
        for name in ("p_color", "p_size"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"synthetic.{name}: expected a probability in [0, 1], got {value!r}")
        if not isinstance(self.render, bool):
            raise ConfigError(f"synthetic.render: expected true or false, got {self.render!r}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 16:
            raise ConfigError(f"synthetic.image_size: expected an integer >= 16 (pixels), got {self.image_size!r}")
        for name in ("attribute_scale", "noise", "scene_offset"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ConfigError(f"synthetic.{name}: expected a non-negative number, got {value!r}")


@dataclass(frozen=True)
class World:
    """The vectors of a generated world: one per category, colour, size and clutter type (shared by the
    image and the video generators)."""

    category: np.ndarray  # (C, D)
    color: np.ndarray  # (num_colors, D)
    size: np.ndarray  # (len(SIZES), D)
    clutter: np.ndarray  # (num_clutter_types, D)


def _random_vectors(rng: np.random.Generator, n: int, dim: int, norm: float) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return norm * v / np.linalg.norm(v, axis=1, keepdims=True)


def make_world(cfg: SyntheticConfig, seq: np.random.SeedSequence) -> World:
    """Draw the world's vectors from ``seq`` (``cfg.feature_dim``-d, attributes at ``cfg.attribute_scale``)."""
    rng = np.random.default_rng(seq)
    d = cfg.feature_dim
    return World(
        category=_random_vectors(rng, cfg.num_categories, d, 1.0),
        color=_random_vectors(rng, cfg.num_colors, d, cfg.attribute_scale),
        size=_random_vectors(rng, len(SIZES), d, cfg.attribute_scale),
        clutter=_random_vectors(rng, cfg.num_clutter_types, d, 1.0),
    )


def _phrase(count: int, category: int, color: int | None, size_word: str | None) -> str:
    adjectives = [w for w in (size_word, None if color is None else COLORS[color]) if w]
    singular, plural = NOUNS[category]
    if count == 1:
        words = [*adjectives, singular]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words])
    number = _COUNT_WORDS[count - 2] if count - 2 < len(_COUNT_WORDS) else "several"
    return " ".join([number, *adjectives, plural])


def describe_scene(
    text_rng: random.Random, cfg: SyntheticConfig, cats: np.ndarray, colors: np.ndarray, sizes: np.ndarray
) -> str:
    """One caption of a scene whose objects have these categories, colours and sizes: it mentions some of
    the objects (``cfg.min_mentions``..``max_mentions``), each with its colour and size at ``cfg.p_color`` /
    ``cfg.p_size``."""
    n = len(cats)
    chosen = text_rng.sample(range(n), text_rng.randint(min(cfg.min_mentions, n), min(cfg.max_mentions, n)))
    groups: dict[tuple[int, int | None, str | None], int] = {}
    for o in chosen:
        color = int(colors[o]) if text_rng.random() < cfg.p_color else None
        size = text_rng.choice(SIZES[sizes[o]]) if text_rng.random() < cfg.p_size else None
        key = (int(cats[o]), color, size)
        groups[key] = groups.get(key, 0) + 1
    phrases = [_phrase(c, *key) for key, c in groups.items()]
    text = phrases[0]
    for p in phrases[1:]:
        text += text_rng.choice(_JOINERS) + p
    return text_rng.choice(_OPENERS) + text + text_rng.choice(_ENDINGS)


def _make_split(
    cfg: SyntheticConfig, world: World, num_images: int, seq: np.random.SeedSequence
) -> CaptionDataset:
    feat_seq, text_seq, render_seq = seq.spawn(3)  # the first two are those of spawn(2): same data as before
    rng = np.random.default_rng(feat_seq)
    d = cfg.feature_dim
    n_obj = rng.integers(cfg.min_objects, cfg.max_objects + 1, size=num_images)
    n_clut = rng.integers(cfg.min_clutter, cfg.max_clutter + 1, size=num_images)
    total_obj = int(n_obj.sum())
    cats = rng.integers(0, cfg.num_categories, size=total_obj)
    colors = rng.integers(0, cfg.num_colors, size=total_obj)
    sizes = rng.integers(0, len(SIZES), size=total_obj)
    clutter = rng.integers(0, cfg.num_clutter_types, size=int(n_clut.sum()))

    text_rng = random.Random(int(text_seq.generate_state(1)[0]))
    starts = np.concatenate([[0], np.cumsum(n_obj)])
    captions = []
    for i in range(num_images):
        sl = slice(starts[i], starts[i + 1])
        for _ in range(cfg.captions_per_image):
            captions.append(describe_scene(text_rng, cfg, cats[sl], colors[sl], sizes[sl]))
    if cfg.render:  # the same scenes and captions, drawn as images
        from vsekit.data.render import render_split

        return render_split(cfg, n_obj, cats, colors, sizes, n_clut, clutter, captions, render_seq)

    objects = world.category[cats] + world.color[colors] + world.size[sizes]
    # Regions of image i: its objects then its clutter, then shuffled within the image.
    n_regions = n_obj + n_clut
    owner = np.concatenate([np.repeat(np.arange(num_images), n_obj), np.repeat(np.arange(num_images), n_clut)])
    feats = np.concatenate([objects, world.clutter[clutter]])
    feats += rng.standard_normal(feats.shape) * (cfg.noise / np.sqrt(d))
    feats += (rng.standard_normal((num_images, d)) * (cfg.scene_offset / np.sqrt(d)))[owner]
    order = np.lexsort((rng.random(len(owner)), owner))
    features = np.split(feats[order].astype(np.float32), np.cumsum(n_regions)[:-1])
    return FeatureCaptionDataset(features, captions, cfg.captions_per_image)


def make_synthetic(config: SyntheticConfig | None = None, **overrides: Any) -> dict[str, CaptionDataset]:
    """Make the synthetic ``train``, ``val`` and ``test`` datasets.

    The world depends only on ``seed`` (and the vocabulary/dimension fields); every split has its own seed
    derived from ``seed``, so e.g. the test split does not change when ``num_train`` does.

    Args:
        config: settings (defaults if None).
        **overrides: fields of :class:`SyntheticConfig` to replace, e.g. ``num_train=1000``.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}`` :class:`~vsekit.data.datasets.FeatureCaptionDataset`
        objects with variable-size region sets (with ``render=True``:
        :class:`~vsekit.data.render.RenderedScenes` of images). A split with 0 images is left out.

    Raises:
        ConfigError: if a field is unknown or invalid.
    """
    cfg = config if config is not None else SyntheticConfig()
    check_options(SyntheticConfig, overrides, "synthetic")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    root = np.random.SeedSequence(cfg.seed)
    world_seq, *split_seqs = root.spawn(1 + len(_SPLITS))
    world = make_world(cfg, world_seq)
    sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    return {
        name: _make_split(cfg, world, sizes[name], seq)
        for name, seq in zip(_SPLITS, split_seqs)
        if sizes[name] > 0
    }


SPLIT_SIZES = {"train": "num_train", "val": "num_val", "test": "num_test"}
"""The generated splits and the config field that sizes each."""


def check_options(cls: type, options: Mapping[str, Any], where: str, what: str = "") -> None:
    """Raise a one-line :class:`ConfigError` naming ``where.field`` for the first (sorted) field of ``options`` that
    the dataclass ``cls`` does not have; ``what`` is added after "unknown field" (e.g. which data kind)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field{what} (known: {', '.join(sorted(known))})")


def generate_split(
    generate: Callable[..., dict[str, Any]], cls: type, options: Mapping[str, Any], split: str, captions_per_image: int,
    what: str = "",
) -> Any:
    """One split of generated data, as ``data.synthetic`` asks for it, generating only that split (each split has
    its own seed, so the other splits are not needed to reproduce it).

    Args:
        generate: :func:`make_synthetic` or :func:`vsekit.data.video.make_synthetic_video`.
        cls: the config dataclass ``generate`` takes its options from.
        options: ``data.synthetic``.
        split: ``train``, ``val`` or ``test``.
        captions_per_image: ``data.captions_per_image``, used unless ``options`` sets it.
        what: added to the unknown-field error (which data kind reads the options).

    Raises:
        ConfigError: for an unknown split or option, or an empty split.
    """
    if split not in SPLIT_SIZES:
        raise ConfigError(f"split {split!r}: the generated data has splits {', '.join(SPLIT_SIZES)}")
    check_options(cls, options, "data.synthetic", what)
    overrides = dict(options)
    overrides.setdefault("captions_per_image", captions_per_image)
    for other, name in SPLIT_SIZES.items():
        if other != split:
            overrides[name] = 0
    splits = generate(**overrides)
    if split not in splits:
        raise ConfigError(f"data.synthetic.{SPLIT_SIZES[split]}: the {split!r} split is empty")
    return splits[split]
