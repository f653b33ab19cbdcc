"""docs/demo.jpg: the `examples/` images (top row) over their colour depth from `make demo` (bottom row).

    make demo && python scripts/demo_figure.py [--outputs outputs] [--out docs/demo.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from agdepth.imageio import OUTPUT_SUFFIXES

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=Path, default=ROOT / "examples")
    ap.add_argument("--outputs", type=Path, default=ROOT / "outputs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.jpg")
    ap.add_argument("--tile", type=int, default=256, help="height of each tile in pixels")
    args = ap.parse_args()
    images = sorted(args.examples.glob("*.jpg"))
    if not images:
        raise SystemExit(f"no .jpg images in {args.examples}")
    pairs = []
    for img in images:
        depth = args.outputs / (img.stem + OUTPUT_SUFFIXES["color"])
        if not depth.is_file():
            raise SystemExit(f"{depth} is missing: run `make demo` first")
        pairs.append((Image.open(img).convert("RGB"), Image.open(depth).convert("RGB")))
    t = args.tile
    widths = [round(a.width * t / a.height) for a, _ in pairs]
    sheet = Image.new("RGB", (sum(widths) + 4 * (len(pairs) - 1), 2 * t + 4), "white")
    x = 0
    for (rgb, depth), w in zip(pairs, widths, strict=True):
        sheet.paste(rgb.resize((w, t), Image.Resampling.LANCZOS), (x, 0))
        sheet.paste(depth.resize((w, t), Image.Resampling.LANCZOS), (x, t + 4))
        x += w + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=90)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
