"""depth-data: write procedural RGB-D scenes as a folder dataset (the layout of :mod:`agdepth.data.folder`).

    depth-data procedural tabletop --count 1000 --out data/tabletop            # rgb/, depth/ (16-bit PNG, mm)
    depth-data procedural forest --split test --count 100 --format npy --out data/forest

Each scene is ``rgb/<domain>_<split>_<index>.png`` with its depth map in ``depth/`` (0 where the scene has no valid
depth, e.g. sky) and its camera in ``intrinsics.csv`` (``name,fx,fy,cx,cy`` in pixels). Every file is written through
a temporary name, so an interrupted run leaves only whole files; a rerun writes the missing ones.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from agdepth.data.procedural import DOMAINS, SPLIT_BASE, render_scene
from agdepth.imageio import PNG_COMPRESS_LEVEL, write_bytes_atomic, write_depth_png16_mm, write_npy

FORMATS = {"png": ".png", "npy": ".npy", "tiff": ".tiff", "exr": ".exr"}


def _tiff_bytes(depth: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(depth.astype(np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def _write_exr(path: Path, depth: np.ndarray) -> None:
    try:
        import OpenEXR
    except ImportError as e:
        raise click.UsageError("--format exr needs the OpenEXR bindings: pip install 'agdepth[exr]'") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.exr")
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Z": depth.astype(np.float32)}) as f:
        f.write(str(tmp))
    tmp.replace(path)


def write_depth_file(path: Path, depth: np.ndarray, fmt: str) -> None:
    """Depth in metres, 0 = no measurement: 16-bit PNG in millimetres, or float32 metres (npy, TIFF, EXR)."""
    if fmt == "png":
        write_depth_png16_mm(path, depth)
    elif fmt == "npy":
        write_npy(path, depth)
    elif fmt == "tiff":
        write_bytes_atomic(path, _tiff_bytes(depth))
    else:
        _write_exr(path, depth)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Datasets for training and evaluation in the folder layout (rgb/, depth/)."""


@main.command("procedural")
@click.argument("domain", type=click.Choice(sorted(DOMAINS)))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The dataset folder.")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True, help="Scenes to write.")
@click.option("--size", type=click.IntRange(min=16), default=128, show_default=True, help="Image side (px).")
@click.option("--split", type=click.Choice(sorted(SPLIT_BASE)), default="train", show_default=True,
              help="Which scene seeds (the splits never share a scene).")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="png", show_default=True,
              help="Depth files: 16-bit PNG in millimetres (read with --depth-scale 0.001), or float32 metres.")
@click.option("--no-progress", is_flag=True)
def procedural(domain: str, out: Path, count: int, size: int, split: str, fmt: str, no_progress: bool) -> None:
    """Render COUNT scenes of DOMAIN into OUT as rgb/NAME.png, depth/NAME.<format> and intrinsics.csv."""
    rows = []
    for i in tqdm(range(count), desc=f"{domain} {split}", unit="scene", disable=no_progress):
        name = f"{domain}_{split}_{i:05d}"
        rgb_path, depth_path = out / "rgb" / f"{name}.png", out / "depth" / f"{name}{FORMATS[fmt]}"
        scene = render_scene(domain, i, (size, size), split)
        if not (rgb_path.is_file() and depth_path.is_file()):
            depth = np.where(scene.valid, scene.depth, 0).astype(np.float32)
            write_depth_file(depth_path, depth, fmt)
            buf = io.BytesIO()
            Image.fromarray(scene.rgb).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            write_bytes_atomic(rgb_path, buf.getvalue())  # last: an image is listed only with its depth written
        k = scene.intrinsics
        rows.append((f"{name}.png", *(f"{float(v):.6g}" for v in (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("name", "fx", "fy", "cx", "cy"))
    writer.writerows(rows)
    write_bytes_atomic(out / "intrinsics.csv", buf.getvalue().encode())
    click.echo(f"wrote {count} {domain} scenes ({split} split, {size}x{size}, depth as {fmt}) to {out}")


if __name__ == "__main__":
    main()
