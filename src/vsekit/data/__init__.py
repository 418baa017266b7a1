"""Datasets, vocabulary and batching for vsekit."""

from vsekit.data.collate import Batch, Collator, FeatureInput, collate_captions, collate_images
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
from vsekit.data.tokenizers import build_tokenizer, tokenizer_from_dict
from vsekit.data.vocab import Vocabulary, build_vocab, tokenize

__all__ = [
    "Batch",
    "CaptionDataset",
    "Collator",
    "FeatureCaptionDataset",
    "FeatureInput",
    "ImageRecord",
    "KarpathyJSON",
    "PrecompDataset",
    "SyntheticConfig",
    "Vocabulary",
    "build_tokenizer",
    "build_vocab",
    "captions_from_records",
    "collate_captions",
    "collate_images",
    "make_synthetic",
    "tokenize",
    "tokenizer_from_dict",
    "write_precomp",
]
