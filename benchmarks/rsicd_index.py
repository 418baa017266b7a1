"""Does a search index of RSICD hold what evaluation scored? `vsekit encode` against `vsekit eval` on real data.

Builds (or brings up to date) an index of the RSICD test split with a features model, the way the README
shows (``Index.build`` with ``features=``; the checkpoint's ``data.eval_views`` by default), then scores the
official 5-caption protocol twice:

(a) from ``vsekit.evaluation.similarity_matrix`` on the evaluation dataset (what ``vsekit eval`` does);
(b) from the index's embeddings alone: every test image, and every caption through the index's text entry
    for it (an image's identical captions share one entry there).

(c) image files as queries: ``--image-queries`` test images, evenly spaced, each searched with its JPEG file
    (``Index.search(image=path)``, which runs the features' backbone over the image and its views, as
    ``vsekit extract`` did). It reports how far the query embedding is from the image's indexed one, the rank the
    image gets for its own photo, and the seconds per query.

It prints both rows, the largest difference between the two similarity matrices, the image-query check and the
time to build the index, and writes a JSON file atomically. The exit status is 1 when the similarity matrices
differ by 1e-3 or more, or a query photo's embedding by 5e-3 or more from the indexed one.

Usage:
    python benchmarks/rsicd_index.py RUN FEATURES ../shared/datasets/rsicd [--split test]
                                     [--index /tmp/rsicd_test.index] [--image-queries 100]
                                     [--out benchmarks/results/rsicd_index.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from vsekit.checkpoint import model_from_checkpoint, read_checkpoint
from vsekit.config import DataConfig
from vsekit.data.karpathy import KarpathyJSON, captions_from_records
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


def image_queries(idx: Index, records: list, image_root: Path, n: int) -> dict:
    """Search with ``n`` evenly spaced images' files: embedding distance to the indexed image, its own rank, time."""
    picks = [records[i] for i in np.linspace(0, len(records) - 1, min(n, len(records))).round().astype(int)]
    idx.embed_images([image_root / image_id(picks[0])])  # warm-up: builds the extractor
    diffs, ranks, seconds = [], [], []
    for r in picks:
        name = image_id(r)
        start = time.perf_counter()
        hits = idx.search(image=image_root / name, k=10)
        seconds.append(time.perf_counter() - start)
        ranks.append(next((h.rank for h in hits if h.id == name), None))
        diffs.append(float(np.abs(idx.embed_images([image_root / name])[0] - idx.embedding(name)).max()))
    return {
        "queries": len(picks),
        "max_abs_embedding_diff": max(diffs),
        "own_image_first": sum(rank == 1 for rank in ranks),
        "own_image_in_top10": sum(rank is not None for rank in ranks),
        "median_seconds_per_query": round(statistics.median(seconds), 4),
        "not_first": {image_id(r): rank for r, rank in zip(picks, ranks) if rank != 1},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder or checkpoint of a model trained on vsekit extract features")
    p.add_argument("features", help="the features folder (vsekit extract; with the views the checkpoint evaluates on)")
    p.add_argument("data", help="the RSICD folder (dataset_rsicd.json + images/)")
    p.add_argument("--split", default="test")
    p.add_argument("--index", default="/tmp/rsicd_test.index", help="index folder (reused when it is up to date)")
    p.add_argument("--image-queries", type=int, default=100, help="test images searched with their own files")
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
    photos = image_queries(idx, records, data_dir / "images", args.image_queries)
    print(f"image files as queries: {photos['own_image_first']}/{photos['queries']} find their own image first "
          f"({photos['own_image_in_top10']} in the top 10); max |query - indexed| embedding "
          f"{photos['max_abs_embedding_diff']:.2e}; {photos['median_seconds_per_query']:.3f} s per query (median)")
    if photos["not_first"]:
        print(f"  not first (image: its rank, None = below 10): {photos['not_first']}")
    result = {
        "run": str(args.run), "split": args.split, "views": st["views"], "max_abs_sim_diff": diff,
        "build_seconds": round(build_s, 2), "index_timing": idx.meta.get("timing", {}),
        "metrics": {name: {key: round(float(m[key]), 3) for key in (*KEYS, "rsum")} for name, m in rows.items()},
        "image_queries": photos,
    }  # fmt: skip
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0 if diff < 1e-3 and photos["max_abs_embedding_diff"] < 5e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
