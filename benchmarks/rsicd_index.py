"""Does a search index of RSICD hold what evaluation scored? `vsekit encode` against `vsekit eval` on real data.

Builds (or brings up to date) an index of the RSICD test split with a features model, the way the README
shows (``Index.build`` with ``features=``; the checkpoint's ``data.eval_views`` by default), then scores the
official 5-caption protocol twice:

(a) from ``vsekit.evaluation.similarity_matrix`` on the evaluation dataset (what ``vsekit eval`` does);
(b) from the index's embeddings alone: every test image, and every caption through the index's text entry
    for it (an image's identical captions share one entry there).

It prints both rows, the largest difference between the two similarity matrices and the time to build the
index, and writes a JSON file atomically.

Usage:
    python benchmarks/rsicd_index.py RUN FEATURES ../shared/datasets/rsicd [--split test]
                                     [--index /tmp/rsicd_test.index] [--out benchmarks/results/rsicd_index.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from vsekit.checkpoint import model_from_checkpoint, read_checkpoint
from vsekit.config import DataConfig
from vsekit.data.datasets import KarpathyJSON, captions_from_records
from vsekit.data.factory import build_dataset
from vsekit.errors import DataError
from vsekit.evaluation import evaluate_sims, similarity_matrix
from vsekit.index import Index
from vsekit.io import atomic_write_json

KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def image_id(record) -> str:
    """The index id of a Karpathy record's image: its path under the image root."""
    return PurePosixPath(record.filepath, record.filename).as_posix()


def index_sims(idx: Index, records: list, captions: list[str], k: int) -> np.ndarray:
    """The images × captions similarities from the index's embeddings (captions in protocol order)."""
    images = np.stack([idx.embedding(image_id(r)) for r in records])
    texts: dict[tuple[str, str], np.ndarray] = {}
    for r in records:
        n = 0
        while True:  # the index numbers an image's distinct captions #0, #1, ...
            try:
                item = idx.item(f"{image_id(r)}#{n}")
            except DataError:  # past the last caption of this image
                break
            texts[(image_id(r), item["caption"])] = idx.embedding(item["id"])
            n += 1
    rows = [texts[(image_id(records[j // k]), c)] for j, c in enumerate(captions)]
    return images @ np.stack(rows).T


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder or checkpoint of a model trained on vsekit extract features")
    p.add_argument("features", help="the features folder (vsekit extract; with the views the checkpoint evaluates on)")
    p.add_argument("data", help="the RSICD folder (dataset_rsicd.json + images/)")
    p.add_argument("--split", default="test")
    p.add_argument("--index", default="/tmp/rsicd_test.index", help="index folder (reused when it is up to date)")
    p.add_argument("--out", default="benchmarks/results/rsicd_index.json")
    args = p.parse_args(argv)

    data_dir = Path(args.data)
    ann = data_dir / "dataset_rsicd.json"
    start = time.perf_counter()
    idx = Index.build(args.run, ann, args.index, features=args.features, image_root=data_dir / "images", split=args.split)
    build_s = time.perf_counter() - start

    ckpt = read_checkpoint(args.run)
    views = list(ckpt["config"]["data"].get("eval_views") or [])
    model = model_from_checkpoint(ckpt).eval()
    k = 5
    dataset = build_dataset(
        DataConfig(kind="karpathy", path=str(ann), features=args.features, eval_views=views), args.split, evaluation=True
    )
    evaluated = similarity_matrix(model, dataset)
    records = KarpathyJSON(ann).records([args.split])
    from_index = index_sims(idx, records, captions_from_records(records, k), k)

    rows = {"vsekit eval": evaluate_sims(evaluated, captions_per_image=k), "index": evaluate_sims(from_index, captions_per_image=k)}
    diff = float(np.abs(evaluated - from_index).max())
    print(f"| source | {' | '.join(KEYS)} | mR |\n|---|{'---|' * (len(KEYS) + 1)}")
    for name, m in rows.items():
        print(f"| {name} | {' | '.join(f'{m[key]:.2f}' for key in KEYS)} | {m['rsum'] / 6:.2f} |")
    st = idx.stats()
    print(f"\nmax |eval - index| similarity: {diff:.2e}; views {st['views']}; {st['num_images']} images, "
          f"{st['num_texts']} distinct captions; index build {build_s:.1f} s")  # fmt: skip
    result = {
        "run": str(args.run), "split": args.split, "views": st["views"], "max_abs_sim_diff": diff,
        "build_seconds": round(build_s, 2), "index_timing": idx.meta.get("timing", {}),
        "metrics": {name: {key: round(float(m[key]), 3) for key in (*KEYS, "rsum")} for name, m in rows.items()},
    }  # fmt: skip
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
