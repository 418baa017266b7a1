"""Datasets, vocabulary and batching for vsekit."""

from vsekit.data.collate import Batch, Collator, collate_captions, collate_images
from vsekit.data.datasets import (
    CaptionDataset,
    FeatureCaptionDataset,
    ImageRecord,
    KarpathyJSON,
    PrecompDataset,
    captions_from_records,
    write_precomp,
)
from vsekit.data.synthetic import SyntheticConfig, make_synthetic
from vsekit.data.vocab import Vocabulary, build_vocab, tokenize

__all__ = [
    "Batch",
    "CaptionDataset",
    "Collator",
    "FeatureCaptionDataset",
    "ImageRecord",
    "KarpathyJSON",
    "PrecompDataset",
    "SyntheticConfig",
    "Vocabulary",
    "build_vocab",
    "captions_from_records",
    "collate_captions",
    "collate_images",
    "make_synthetic",
    "tokenize",
    "write_precomp",
]
