"""Dual-Path (Zheng et al., "Dual-Path Convolutional Image-Text Embeddings with Instance Loss", ACM TOMM
2020): the deep text CNN (``textcnn``) and the image branch (``dualpath_image``).

Both branches end in a bias-free linear layer followed by BatchNorm; that pre-ReLU output is the raw
embedding. :class:`vsekit.models.VSEModel` l2-normalises it for retrieval and feeds
``dropout(relu(raw))`` to the instance classifier shared by the two branches (``model.classify``).

Test-time augmentation follows the official evaluation code: the text embedding is the *sum* over every
position at which the sentence fits into the ``max_length`` slots, the image embedding the sum over the
image and its horizontal flip (sums, not means; the l2 normalisation makes them equivalent).

Text CNN layout (official ``resnet52_new_hope_word2_pool.m``; sequence length 32 in brackets)::

    ids in 32 slots -> embed (one-hot 1×1 conv = embedding + bias) -> BN            word_dim × [32]
    stage 1: projection block (mid w1/2) + 2 identity blocks (mid w1/4)           w1 × [32]
    stage 2: stride-2 block (mid w2) + 3 identity blocks (mid w2/4)               w2 × [16]
    stage 3: stride-2 block (mid w3) + 5 identity blocks (mid w3/4)               w3 × [8]
    stage 4: projection block (mid w4)                                            w4 × [8]
    max over positions -> fc (no bias) -> BN  = raw embedding                     embed_size

Every bottleneck is ``1×1 -> BN -> ReLU -> width-2 conv (left pad 1, stride 1 or 2) -> BN -> ReLU ->
1×1 -> BN``, summed with the shortcut (identity, or ``1×1 conv (same stride) -> BN``) and passed
through ReLU. The stage widths are ``(w1, w2, w3, w4) = embed_size × (1/8, 1/4, 1/2, 1)``, i.e. the
paper's 256 / 512 / 1024 / 2048 at ``embed_size = 2048`` (see :func:`textcnn_widths`), so small CPU
models keep the same shape.

Initialisation: convolutions He-normal (fan-out); the last BatchNorm of every residual branch starts with
a zero scale (Goyal et al., 2017), so that the deep stack starts close to the identity. The official
MatConvNet initialisation sets every BatchNorm scale to 1; with it, small models trained for a few epochs
barely learn (the ``demo_max`` recipe with ``model.text.kind=textcnn``, ``embed_size=128``, 400 scenes,
5 epochs: validation rsum 51 instead of 201).

The stage block counts are :data:`TEXTCNN_BLOCKS` = ``(3, 4, 6, 1)``. ResNet-50 has (3, 4, 6, 3), and
the paper's text CNN is described as ResNet-50-like, but the official network definition has a single
(projection) block in the last stage, followed directly by the pooling; we follow the code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ImageEncoderConfig, TextEncoderConfig
from .common import copy_word_vectors
from .registry import TextInputs, register_image_encoder, register_text_encoder

TEXTCNN_BLOCKS: tuple[int, int, int, int] = (3, 4, 6, 1)
"""Bottleneck blocks per stage of the text CNN (official code: 3 + 4 + 6 + 1)."""

DUALPATH_MIN_CROP = 0.8
"""Smallest training crop of the image branch, as a fraction of the image sides (official: [0.8, 1])."""

EVAL_SHIFT_CHUNK = 4096
"""Test-time shift augmentation runs the CNN on at most this many shifted sentences at once."""


def textcnn_widths(embed_size: int) -> tuple[int, int, int, int]:
    """Output channels of the four text-CNN stages: ``embed_size × (1/8, 1/4, 1/2, 1)``, at least 1.

    >>> textcnn_widths(2048)
    (256, 512, 1024, 2048)
    >>> textcnn_widths(64)
    (8, 16, 32, 64)
    """
    return tuple(max(1, embed_size // d) for d in (8, 4, 2, 1))  # type: ignore[return-value]


class WordProjection(nn.Embedding):
    """The text CNN's first layer: a 1×1 convolution over one-hot words, i.e. an embedding lookup plus a
    learnable bias (the official ``fc2``, initialised with word2vec).

    Empty slots (a one-hot column of zeros in the original) output only the bias. Parameters are
    ``weight`` (vocab×dim, the word vectors) and ``bias`` (dim), so a learning-rate multiplier on the
    module (``optim.lr_mults: {text_encoder.embed: 1e-3}``, as in the official code) covers both.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        nn.init.uniform_(self.weight, -0.1, 0.1)
        self.bias = nn.Parameter(torch.zeros(embedding_dim))

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``ids``: N×L token ids, ``mask``: N×L true at word slots. Returns N×L×dim."""
        x = F.embedding(ids, self.weight)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        return x + self.bias


class Bottleneck1d(nn.Module):
    """A 1-D residual bottleneck with a width-2 middle convolution (left padding 1).

    Args:
        in_channels: input channels.
        mid_channels: channels of the two inner convolutions.
        out_channels: output channels.
        stride: stride of the width-2 convolution and of the projection shortcut (1 or 2).

    The shortcut is the identity when the shape is kept (``in == out`` and ``stride == 1``), otherwise a
    1×1 convolution with the same stride followed by BatchNorm. Every convolution is bias-free.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(mid_channels)
        self.conv2 = nn.Conv1d(mid_channels, mid_channels, 2, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm1d(mid_channels)
        self.conv3 = nn.Conv1d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm1d(out_channels)
        nn.init.zeros_(self.bn3.weight)  # the residual branch starts at zero (see the module docstring)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm1d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: N×C_in×L. Returns N×C_out×ceil(L / stride)."""
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(F.pad(h, (1, 0)))))
        h = self.bn3(self.conv3(h))
        return torch.relu(h + (x if self.shortcut is None else self.shortcut(x)))


def _stage(in_ch: int, width: int, first_mid: int, blocks: int, stride: int) -> list[nn.Module]:
    layers: list[nn.Module] = [Bottleneck1d(in_ch, first_mid, width, stride)]
    layers += [Bottleneck1d(width, max(1, width // 4), width) for _ in range(blocks - 1)]
    return layers


def shift_offsets(lengths: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
    """Every valid start slot of every sentence (test-time shift augmentation), flattened.

    A sentence of ``n`` words fits at the ``max_length - n + 1`` offsets ``0 .. max_length - n``.

    Args:
        lengths: B sentence lengths, already at most ``max_length``.
        max_length: number of slots.

    Returns:
        ``(rows, offsets)``: for each of the S = sum of counts placements, the sentence index and the
        start slot, in sentence order.

    Example:
        >>> shift_offsets(torch.tensor([3, 4]), 5)
        (tensor([0, 0, 0, 1, 1]), tensor([0, 1, 2, 0, 1]))
    """
    counts = max_length - lengths + 1
    rows = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(rows.shape[0], device=lengths.device) - starts[rows]
    return rows, offsets


def place_in_slots(ids: Tensor, lengths: Tensor, offsets: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
    """Write each sentence into ``max_length`` slots starting at its offset.

    Args:
        ids: N×T token ids (row i holds sentence i in its first ``lengths[i]`` entries).
        lengths: N lengths, at most ``max_length``.
        offsets: N start slots, each in ``[0, max_length - lengths[i]]``.
        max_length: number of slots.

    Returns:
        ``(slots, mask)``: N×max_length ids (0 in empty slots) and the N×max_length word-slot mask.
    """
    pos = torch.arange(max_length, device=ids.device)[None, :] - offsets[:, None]  # word index per slot
    mask = (pos >= 0) & (pos < lengths[:, None])
    slots = ids.gather(1, pos.clamp(0, ids.shape[1] - 1))
    return torch.where(mask, slots, torch.zeros_like(slots)), mask


@register_text_encoder("textcnn")
class TextCNNEncoder(nn.Module):
    """Dual-Path deep text CNN: token ids -> raw embedding (pre-ReLU ``fc -> BN``).

    Sentences longer than ``cfg.max_length`` tokens are truncated. In training each sentence is placed at
    a uniformly random start slot (shift augmentation; the other slots are empty); in evaluation the
    output is the sum of the raw outputs over every valid start slot (computed in one batch of shifted
    copies, :data:`EVAL_SHIFT_CHUNK` at a time). The tokens are those of the model's tokenizer
    (``<start>``/``<end>`` included for a :class:`vsekit.text.Vocabulary`).

    Args:
        cfg: the text encoder config (``word_dim``, ``max_length``; ``pooling`` and ``augment`` are unused:
            the pooling is the architecture's max over positions and the augmentation is the shift).
        embed_size: joint embedding size (also sets the stage widths, :func:`textcnn_widths`).
        inputs: the vocabulary size and optional word vectors to initialise the word projection (the mask id
            is unused: the shift is the only text augmentation).
    """

    options = ("word_dim", "word_vectors", "max_length", "dropout")

    @classmethod
    def check_config(cls, cfg: TextEncoderConfig, require_data: bool = True) -> None:
        """Nothing beyond the shared checks: the pooling (max over positions) is part of the architecture."""

    def __init__(self, cfg: TextEncoderConfig, embed_size: int, inputs: TextInputs) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_length = cfg.max_length
        self.embed_size = embed_size
        self.embed = WordProjection(inputs.vocab_size, cfg.word_dim)
        copy_word_vectors(self.embed.weight, inputs.word_vectors)
        self.embed_bn = nn.BatchNorm1d(cfg.word_dim)
        w1, w2, w3, w4 = textcnn_widths(embed_size)
        b1, b2, b3, b4 = TEXTCNN_BLOCKS
        layers = _stage(cfg.word_dim, w1, max(1, w1 // 2), b1, 1)
        layers += _stage(w1, w2, w2, b2, 2)
        layers += _stage(w2, w3, w3, b3, 2)
        layers += _stage(w3, w4, w4, b4, 1)
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(w4, embed_size, bias=False)
        self.bn = nn.BatchNorm1d(embed_size)
        for m in self.blocks.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def encode_slots(self, slots: Tensor, mask: Tensor) -> Tensor:
        """The CNN on sentences already placed in slots: N×max_length ids + word mask -> N×embed_size."""
        x = self.embed(slots, mask).transpose(1, 2)  # N×word_dim×L
        x = self.blocks(self.embed_bn(x))
        return self.bn(self.fc(x.amax(dim=2)))

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``ids``: B×T padded token ids, ``lengths``: B caption lengths. Returns B×embed_size (unnormalised)."""
        lengths = lengths.to(ids.device).clamp(0, self.max_length)
        if self.training:
            span = (self.max_length - lengths + 1).to(torch.float32)
            offsets = (torch.rand(lengths.shape, device=ids.device) * span).long().clamp(max=(span - 1).long())
            return self.encode_slots(*place_in_slots(ids, lengths, offsets, self.max_length))
        rows, offsets = shift_offsets(lengths, self.max_length)
        out = torch.zeros(ids.shape[0], self.embed_size, device=ids.device)  # float32 sums, also under autocast
        for start in range(0, rows.shape[0], EVAL_SHIFT_CHUNK):
            r, o = rows[start : start + EVAL_SHIFT_CHUNK], offsets[start : start + EVAL_SHIFT_CHUNK]
            raw = self.encode_slots(*place_in_slots(ids[r], lengths[r], o, self.max_length))
            out = out.index_add(0, r, raw.float())
        return out


@register_image_encoder("dualpath_image")
class DualPathImageEncoder(nn.Module):
    """Dual-Path image branch: CNN backbone -> global average pooling -> ``fc1`` (no bias) -> BN -> ReLU
    -> ``fc1_1`` (no bias) -> BN; the pre-ReLU output is the raw embedding.

    The backbone is ``vsekit.backbones.create_backbone(cfg.backbone, cfg.pretrained)`` (the paper uses
    an ImageNet ResNet-50; the offline default is EfficientNet-Lite0); its channels ``out_dim`` set the
    input width of ``fc1``. In evaluation the raw outputs of the image and of its horizontal flip are
    summed (the official test-time flipping), in one forward pass over both.

    Args:
        cfg: the image encoder config (``backbone``, ``pretrained``, ``image_size``).
        embed_size: joint embedding size.
    """

    input_kind = "pixels"
    options = ("backbone", "pretrained", "image_size", "dropout")

    def __init__(self, cfg: ImageEncoderConfig, embed_size: int) -> None:
        super().__init__()
        from ..backbones import create_backbone

        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone, cfg.pretrained)
        channels = int(self.backbone.out_dim)
        self.fc1 = nn.Linear(channels, embed_size, bias=False)
        self.fc1_bn = nn.BatchNorm1d(embed_size)
        self.fc1_1 = nn.Linear(embed_size, embed_size, bias=False)
        self.fc1_1_bn = nn.BatchNorm1d(embed_size)

    def input_spec(self) -> Any:
        """How dataset images become this encoder's input: a ``vsekit.data.images.PixelInput`` with the
        backbone's pixel statistics and Dual-Path's training crops (relative side in [0.8, 1], as the
        official ``vl_imreadjpeg`` settings; random horizontal flip)."""
        from ..data.images import PixelInput

        return PixelInput(self.cfg.image_size, self.backbone.input_mean, self.backbone.input_std, min_crop=DUALPATH_MIN_CROP)

    def embed_pixels(self, images: Tensor) -> Tensor:
        """B×3×H×W normalised pixels -> B×embed_size raw embeddings, without test-time flipping."""
        pooled = self.backbone(images).mean(dim=(2, 3))
        h = torch.relu(self.fc1_bn(self.fc1(pooled)))
        return self.fc1_1_bn(self.fc1_1(h))

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``images``: B×3×H×W normalised pixels (``lengths`` unused). Returns B×embed_size (unnormalised)."""
        if self.training:
            return self.embed_pixels(images)
        both = self.embed_pixels(torch.cat([images, images.flip(-1)]))
        n = images.shape[0]
        return both[:n] + both[n:]
