"""Datasets and batching for vsekit (the tokenizers live in :mod:`vsekit.text`; their names are re-exported here)."""

from vsekit.data.collate import Batch, Collator, FeatureInput, collate_captions, collate_images
from vsekit.data.datasets import CaptionDataset, FeatureCaptionDataset, PrecompDataset, write_precomp
from vsekit.data.karpathy import ImageRecord, KarpathyJSON, captions_from_records
from vsekit.data.synthetic import SyntheticConfig, make_synthetic
from vsekit.data.images import KarpathyImageDataset, PixelInput, load_image
from vsekit.data.render import RenderedScenes
from vsekit.text import Vocabulary, build_tokenizer, build_vocab, tokenize, tokenizer_from_dict
from vsekit.data.video import (
    FrameFeatureDataset,
    SyntheticVideoConfig,
    make_synthetic_video,
    synthetic_video_split,
    write_frames,
)

__all__ = [
    "Batch",
    "CaptionDataset",
    "Collator",
    "FeatureCaptionDataset",
    "FeatureInput",
    "FrameFeatureDataset",
    "ImageRecord",
    "KarpathyJSON",
    "KarpathyImageDataset",
    "PixelInput",
    "PrecompDataset",
    "RenderedScenes",
    "SyntheticConfig",
    "SyntheticVideoConfig",
    "Vocabulary",
    "build_tokenizer",
    "build_vocab",
    "captions_from_records",
    "collate_captions",
    "collate_images",
    "load_image",
    "make_synthetic",
    "make_synthetic_video",
    "synthetic_video_split",
    "tokenize",
    "tokenizer_from_dict",
    "write_frames",
    "write_precomp",
]
