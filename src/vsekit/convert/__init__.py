"""Import official VSE∞ and VSE++ checkpoints as native vsekit checkpoints.

    vsekit convert model_best.pth vse_infty_bigru.pt --vocab coco_precomp_vocab.json   # VSE∞, BiGRU branch
    vsekit convert model_best.pth vse_infty_bert.pt --bert ./bert-base-uncased         # VSE∞, BERT branch
    vsekit convert model_best.pth.tar vsepp.pt --vocab coco_precomp_vocab.pkl          # VSE++ (precomp)

An official checkpoint is ``{'epoch', 'model': [image_state, text_state], 'best_rsum', 'opt', 'Eiters'}``
with the training options pickled as an ``argparse.Namespace``. It is read with
``torch.load(weights_only=True)``, allowing that one class and nothing else; DataParallel ``module.``
prefixes are stripped. The layout is recognised from the weights (:func:`detect_kind`):

* ``vse_infty_bigru``: VSE∞ ``bigru`` branch. Image: ``fc`` + ``mlp.layers/bns`` + ``gpool`` (precomputed
  regions, ``precomp_enc_type='basic'``); text: ``embed`` + bidirectional ``rnn`` + ``gpool``. Needs the
  SCAN vocabulary JSON it was trained with (``<mask>`` is appended as the last id, as the official loader does).
* ``vse_infty_bert``: VSE∞ ``master`` branch. The same image encoder; text: ``bert.*`` + ``linear`` +
  ``gpool``. Needs the local BERT folder it was trained from (its config and tokenizer; the weights come
  from the checkpoint).
* ``vsepp``: VSE++ with precomputed features. Image: ``fc``; text: ``embed`` + unidirectional ``rnn`` (last
  state). ``opt.measure``, ``opt.use_abs`` and ``opt.no_imgnorm`` carry over. Needs the vocabulary: VSE++'s
  pickled ``Vocabulary`` object (read by a restricted unpickler that builds nothing but a plain holder for
  it) or a SCAN JSON. The embedding table gets one extra row for ``<mask>`` (zeros; used only by text
  augmentation, which VSE++ models do not train with).

Sizes (embedding, feature and word dimensions, GRU layers, vocabulary) come from the weight shapes; the
training options (margin, hardest negatives and their warm-up, learning rate and its decay, epochs, batch
size, normalisation flags, similarity) from ``opt``, on top of the matching preset. The result is written
with :func:`vsekit.checkpoint.save_checkpoint`, so :func:`vsekit.load`, ``vsekit eval`` and ``init_from``
take it like any trained model; the weights are loaded strictly (every key and shape must match).

Not supported (a clear error says so): VSE∞ grid models (a CNN backbone in ``model[0]``) and VSE++
full-image models (a CNN under ``cnn.``).

Tokenisation: VSE∞-BiGRU and VSE++ were trained on ``nltk.word_tokenize`` tokens, which keep punctuation
(``"."``, ``","`` are vocabulary words there) and hyphenated words whole; converted vocabularies therefore
use the ``treebank`` tokenizer (:func:`vsekit.text.vocab.tokenize_treebank`, checked token for token
against nltk's word tokenizer on every RSICD caption), so converted models see the official ids.
"""


from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..configure import validate
from ..errors import CheckpointError, ConfigError, DataError, first_line
from .mapping import bert_mismatch, build_config, load_strictly, map_state
from .reading import DESCRIPTIONS, KINDS, OfficialCheckpoint, detect_kind, read_official_checkpoint
from .vocab import read_official_vocab

__all__ = [
    "KINDS",
    "OfficialCheckpoint",
    "convert_official",
    "detect_kind",
    "read_official_checkpoint",
    "read_official_vocab",
]


def convert_official(
    checkpoint: str | Path,
    output: str | Path,
    *,
    vocab: str | Path | None = None,
    bert_path: str | Path | None = None,
    kind: str = "auto",
) -> Path:
    """Convert an official VSE∞ (BiGRU or BERT branch, region features) or VSE++ (precomp) checkpoint.

    Args:
        checkpoint: the official ``.pth`` / ``.pth.tar`` file.
        output: where to write the vsekit checkpoint.
        vocab: the vocabulary the model was trained with (VSE∞-BiGRU: SCAN JSON; VSE++: the pickled
            ``Vocabulary`` or a SCAN JSON). Required for those kinds, refused for BERT.
        bert_path: the local Hugging Face BERT folder the model was trained from (its ``config.json`` and
            tokenizer; e.g. a saved ``bert-base-uncased``). Required for VSE∞-BERT, refused otherwise.
        kind: ``"auto"`` (detect from the weights) or one of :data:`KINDS` to insist on a layout.

    Returns:
        The path of the written checkpoint.

    Raises:
        CheckpointError: one line naming the file, key or option for every unreadable, unsupported or
            mismatched input (see :func:`read_official_checkpoint`, :func:`read_official_vocab`); nothing
            is written then.
    """
    from ..checkpoint import save_checkpoint
    from ..models import create_model

    if kind != "auto" and kind not in KINDS:
        raise CheckpointError(f"kind: expected 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    output = Path(output)
    source = Path(checkpoint)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise CheckpointError(f"{output}: the output would overwrite the official checkpoint; choose another path")
    ckpt = read_official_checkpoint(source)
    found = detect_kind(ckpt.image_state, ckpt.text_state, str(source))
    if kind != "auto" and kind != found:
        raise CheckpointError(f"{source}: expected a {DESCRIPTIONS[kind]} checkpoint, but the weights are {DESCRIPTIONS[found]}")
    kind = found
    cfg = build_config(ckpt, kind, output.name.split(".")[0] or "converted")
    sizes = f"embed_size={cfg.model.embed_size}, img_dim={cfg.model.image.img_dim}"

    if kind == "vse_infty_bert":
        folder = _bert_folder(source, vocab, bert_path)
        tokenizer, words_in_file = _bert_tokenizer(folder, cfg), None
        cfg.model.text.transformer_path = str(folder.resolve())
    else:
        tokenizer, words_in_file = _official_vocab(ckpt, kind, vocab, bert_path)
        sizes += f", word_dim={cfg.model.text.word_dim}, vocabulary={len(tokenizer)}"

    try:
        validate(cfg, require_data=False)
        model = create_model(cfg.model, tokenizer)
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"{source}: cannot build the converted model ({e})") from None
    state = map_state(ckpt, kind, model)
    if kind == "vsepp" and words_in_file is not None and len(tokenizer) == words_in_file + 1:
        words = state["text_encoder.embed.weight"]
        state["text_encoder.embed.weight"] = torch.cat([words, words.new_zeros(1, words.shape[1])])  # <mask>
    if kind == "vse_infty_bert":
        why = bert_mismatch(model, state)
        if why is not None:
            raise CheckpointError(f"{folder}: the BERT config does not match the checkpoint's bert.* weights: {why}")
    load_strictly(model, state, ckpt, kind, sizes)
    model.eval()
    options = {k: v for k, v in ckpt.opt.items() if isinstance(v, (str, int, float, bool, type(None)))}
    info = {"path": str(source), "kind": kind, "opt": options, "epoch": ckpt.epoch, "iterations": ckpt.iterations}
    return save_checkpoint(
        output, model, cfg,
        epoch=ckpt.epoch if ckpt.epoch is not None else 0,
        step=ckpt.iterations if ckpt.iterations is not None else 0,
        best_rsum=ckpt.best_rsum if ckpt.best_rsum is not None else float("nan"),
        converted_from=info,
    )  # fmt: skip


def _bert_folder(source: Path, vocab: str | Path | None, bert_path: str | Path | None) -> Path:
    """The BERT folder a VSE∞ BERT checkpoint needs (and no vocabulary file)."""
    if vocab is not None:
        raise CheckpointError(f"{source}: a BERT checkpoint uses the BERT folder's tokenizer; drop the vocabulary file")
    if bert_path is None:
        raise CheckpointError(f"{source}: a VSE∞ BERT checkpoint needs the BERT folder it was trained from (bert_path= / --bert PATH)")
    folder = Path(bert_path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: BERT folder not found (expected a local Hugging Face model folder)")
    return folder


def _official_vocab(ckpt: OfficialCheckpoint, kind: str, vocab: str | Path | None, bert_path: str | Path | None) -> tuple[Any, int]:
    """The vocabulary of a BiGRU / VSE++ checkpoint and its number of words, checked against the embedding table."""
    source = ckpt.path
    if bert_path is not None:
        raise CheckpointError(f"{source}: a BERT folder (--bert) applies to VSE∞ BERT checkpoints only; this one is {DESCRIPTIONS[kind]}")
    if vocab is None:
        raise CheckpointError(f"{source}: a {DESCRIPTIONS[kind]} checkpoint needs the vocabulary it was trained with (vocab= / --vocab FILE)")
    tokenizer, words_in_file = read_official_vocab(vocab)
    rows = int(ckpt.text_state["embed.weight"].shape[0])
    # VSE∞ appends <mask> before building the embedding table; VSE++ has no <mask>.
    want = len(tokenizer) if kind == "vse_infty_bigru" else words_in_file
    if rows != want:
        extra = " (its words + <mask>)" if kind == "vse_infty_bigru" and want != words_in_file else ""
        raise CheckpointError(
            f"{vocab}: the vocabulary has {want} ids{extra} but model[1]['embed.weight'] has {rows} rows; "
            f"use the vocabulary the model was trained with"
        )
    return tokenizer, words_in_file


def _bert_tokenizer(folder: Path, cfg: TrainConfig) -> Any:
    """The tokenizer of the BERT folder, set up to build the network from its config (the weights come from
    the checkpoint). The longest caption is the preset's cap, or the model's positions if fewer."""
    from ..text.hf import HFTokenizer

    config_file = folder / "config.json"
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a Hugging Face model folder (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: not a readable model config ({first_line(e)})") from None
    positions = model_config.get("max_position_embeddings") if isinstance(model_config, dict) else None
    if isinstance(positions, int) and positions > 0:
        cfg.model.text.max_length = min(cfg.model.text.max_length, positions)
    try:
        tokenizer = HFTokenizer.from_pretrained(folder, max_length=cfg.model.text.max_length)
    except ConfigError as e:
        raise CheckpointError(str(e).replace("model.text.transformer_path: ", "")) from None
    tokenizer.pretrained_path = None  # build the network from the config; the checkpoint fills every weight
    return tokenizer
