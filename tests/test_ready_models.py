"""The ready models that ship with vsekit reproduce the test metrics their cards give, loaded by name from the
installed package (nothing downloaded), on the photos themselves: a feature model turns them into its features with
the extractor it records."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vsekit.pretrained import list_pretrained

READY = {m["name"]: m for m in list_pretrained()}
RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


@pytest.mark.slow
@pytest.mark.skipif("rsicd-aerial" not in READY, reason="rsicd-aerial is not installed")
def test_rsicd_aerial_reproduces_its_test_metrics_from_the_photos(rsicd, tmp_path):
    pytest.importorskip("pyarrow")
    from vsekit.data import KarpathyJSON
    from vsekit.evaluation import evaluate_sims
    from vsekit.index import Index

    records = KarpathyJSON(rsicd / "dataset_rsicd.json").records(["test"])
    photos = tmp_path / "photos"  # the test photos as a user's folder (images only: no captions to index)
    photos.mkdir()
    for r in records:
        shutil.copyfile(rsicd / "images" / r.filename, photos / r.filename)
    idx = Index.build("rsicd-aerial", photos, tmp_path / "idx", progress=False)
    assert idx.meta["collection"]["extractor"]["backbone"] == "efficientnet_lite0" and idx.stats()["num_images"] == len(records)
    images = np.stack([idx.embedding(r.filename) for r in records])
    texts = idx.model.encode_text([c for r in records for c in r.captions[:5]]).numpy()
    metrics = evaluate_sims(images @ texts.T, captions_per_image=5)
    mr = sum(metrics[k] for k in RECALLS) / 6
    assert mr == pytest.approx(READY["rsicd-aerial"]["metrics"]["test_mR"], abs=0.1), metrics
