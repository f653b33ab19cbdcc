"""Readers of the paper's five real benchmarks, in the on-disk layout of Marigold's evaluation data.

Marigold (prs-eth/Marigold) ships its evaluation sets as tars (``nyuv2/nyu_labeled_extracted.tar``,
``kitti/kitti_eigen_split_test.tar``, ``eth3d/eth3d.tar``, ``scannet/scannet_val_sampled_800_1.tar``,
``diode/diode_val.tar``; see its ``config/dataset/data_*.yaml``). Each reader here takes ``root``, the folder one of
those tars was extracted into (the paths in the split list are relative to it), and reads the samples named by the
split list from Marigold's ``data_split/`` folder. The lists are not shipped with this package: pass
``filename_list=...``, or put the list in ``root`` under its Marigold file name (``root/<name>`` or
``root/data_split/<dataset>/<name>``); each reader's docstring gives the name. :mod:`agdepth.evaluation.registry`
reaches them by name.

Every reader yields :class:`~agdepth.evaluation.datasets.EvalSample` s: the image, the ground truth in metres (0 where
there is no measurement) and ``mask``, the scored pixels: finite depth strictly inside ``depth_range`` (Marigold's
``BaseDepthDataset._get_valid_mask`` uses ``min < d < max``), and the dataset's crop mask. A missing, unreadable or
wrongly sized sample file raises :class:`~agdepth.data.base.SampleReadError` naming that file; a missing root or
split list raises :class:`FileNotFoundError` naming the path.

Protocol defaults (class attributes) follow Marigold's evaluation scripts ``script/eval/*.sh``::

    name      depth range (m)  processing res  scored crop                                   samples
    nyu       (1e-3, 10)       0 (native)      Eigen crop: rows 45:471, cols 41:601          654
    kitti     (1e-5, 80)       0 (native)      benchmark crop 352x1216, then Eigen fractions 652
    eth3d     (1e-5, inf)      756             none                                          454
    scannet   (1e-3, 10)       0 (native)      none                                          800
    diode     (0.6, 350)       640             none (DIODE's own mask file)                  771

``diode-indoor`` (325) and ``diode-outdoor`` (446) are the two halves of ``diode``. All five are scored after a
least-squares scale-and-shift fit in depth space (``--alignment least_square`` in every ``script/eval/*_eval_*.sh``).
"""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import ClassVar

import numpy as np

from agdepth.data.base import PathLike, SampleReadError, parse_filename_list, read_png_uint16, read_rgb_uint8
from agdepth.data.folder import DepthEncoding, discover_pairs, read_depth_file, read_mask_file
from agdepth.data.vkitti import KB_CROP_HW, kb_crop_offsets
from agdepth.evaluation.datasets import EvalDataset, EvalSample

__all__ = [
    "DIODE",
    "DIODEIndoor",
    "DIODEOutdoor",
    "ETH3D",
    "KITTI_CROP_FRACTIONS",
    "KITTIEigenTest",
    "MarigoldEvalDataset",
    "NYUv2",
    "ScanNet",
    "kitti_crop_mask",
    "nyu_eigen_crop_mask",
]

Entry = tuple[str, ...]  # one split-list line: (rgb_rel, depth_rel, [extra columns the reader uses])


class MarigoldEvalDataset(EvalDataset):
    """Common machinery: root and split-list lookup, depth-range overrides, the per-sample pipeline.

    Pipeline of :meth:`load`: read rgb and depth -> check sizes -> the dataset's own validity (DIODE's mask file) ->
    spatial crop (KITTI's benchmark crop) -> ``mask = finite & (min < depth < max) & crop mask & own validity`` ->
    depth set to 0 where it is not a positive finite number.
    """

    # Marigold's split lists, relative to the Marigold repository; the first one's file name is the documented one.
    list_paths: ClassVar[tuple[str, ...]] = ()
    # Marigold's ``--alignment_max_res`` for this benchmark (None: align at full resolution).
    alignment_max_res: ClassVar[int | None] = None
    dense = False

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike | None = None,
        *,
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        if root is None:
            raise ValueError(f"dataset {self.name!r} needs a data root (the folder holding its files)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"{self.name} data root not found", str(self.root))
        lo, hi = type(self).depth_range
        lo = float(lo if min_depth is None else min_depth)
        hi = float(hi if max_depth is None else max_depth)
        if math.isnan(lo) or math.isnan(hi) or not 0 <= lo < hi:
            raise ValueError(f"{self.name}: depth range must satisfy 0 <= min_depth < max_depth, got ({lo}, {hi})")
        self.depth_range = (lo, hi)
        self.filename_list = self._find_list(filename_list)
        self._entries: list[Entry] = self._read_list(self.filename_list)
        if not self._entries:
            raise ValueError(f"{self.name}: filename list {self.filename_list} names no usable sample")

    # --- split list ----------------------------------------------------------------------------
    @classmethod
    def expected_list_name(cls) -> str:
        """The file name of Marigold's split list for this benchmark."""
        return Path(cls.list_paths[0]).name

    @classmethod
    def list_candidates(cls, root: PathLike) -> list[Path]:
        """Where the split list is looked for inside ``root`` when ``filename_list`` is not given."""
        root = Path(root)
        out = [root / cls.expected_list_name()]
        out += [root / p for p in cls.list_paths]
        return list(dict.fromkeys(out))

    def _find_list(self, filename_list: PathLike | None) -> Path:
        if filename_list is not None:
            path = Path(filename_list)
            if not path.is_file():
                raise FileNotFoundError(errno.ENOENT, f"{self.name} filename list not found", str(path))
            return path
        candidates = self.list_candidates(self.root)
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(
            errno.ENOENT,
            f"{self.name}: no filename_list given and Marigold's split list {self.expected_list_name()} "
            f"(Marigold's {self.list_paths[0]}) is not in the data root; looked for "
            + ", ".join(str(p) for p in candidates)
            + "; pass filename_list=<path> (--filename-list)",
            str(candidates[0]),
        )

    def _read_list(self, path: Path) -> list[Entry]:
        return [tuple(p) for p in parse_filename_list(path)]

    # --- per-dataset hooks ---------------------------------------------------------------------
    def _read_depth(self, path: Path) -> np.ndarray:
        """HxW float depth in metres; 0/inf/nan where there is no measurement. Raises SampleReadError."""
        raise NotImplementedError

    def _own_valid(self, entry: Entry, shape: tuple[int, int]) -> np.ndarray | None:
        """A validity mask the dataset ships with its ground truth (None: none)."""
        return None

    def _crop(
        self, rgb_path: Path, rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return rgb, depth, valid

    def _crop_mask(self, depth_path: Path, shape: tuple[int, int]) -> np.ndarray | None:
        """The evaluation crop on the (already cropped) frame; None: every pixel."""
        return None

    # --- EvalDataset ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [e[0] for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, index: int) -> EvalSample:
        entry = self._entries[index]
        rgb_path, depth_path = self.root / entry[0], self.root / entry[1]
        rgb = read_rgb_uint8(rgb_path)
        depth = self._read_depth(depth_path)
        if depth.ndim != 2:
            raise SampleReadError(depth_path, f"expected a single-channel depth map, got shape {depth.shape}")
        if depth.shape != rgb.shape[:2]:
            raise SampleReadError(
                depth_path, f"depth size {depth.shape[0]}x{depth.shape[1]} does not match the image "
                f"{rgb_path.name} ({rgb.shape[0]}x{rgb.shape[1]})"
            )
        own = self._own_valid(entry, depth.shape)
        rgb, depth, own = self._crop(rgb_path, rgb, depth, own)
        lo, hi = self.depth_range
        finite = np.isfinite(depth)
        with np.errstate(invalid="ignore"):
            mask = finite & (depth > lo) & (depth < hi)
            measured = finite & (depth > 0)
        crop = self._crop_mask(depth_path, depth.shape)
        if crop is not None:
            mask &= crop
        if own is not None:
            mask &= own
        depth = np.where(measured, depth, 0).astype(np.float32)
        return EvalSample(entry[0], np.ascontiguousarray(rgb), np.ascontiguousarray(depth), np.ascontiguousarray(mask))


# ------------------------------------------------------------------------------------------------ NYU Depth v2
NYU_FRAME_HW = (480, 640)
NYU_EIGEN_CROP = (slice(45, 471), slice(41, 601))  # rows, cols of the 480x640 frame


def nyu_eigen_crop_mask(shape: tuple[int, int] = NYU_FRAME_HW) -> np.ndarray:
    """Eigen et al.'s NYUv2 evaluation crop: rows 45..470, columns 41..600 of the 480x640 frame.

    Source: Marigold ``src/dataset/nyu_dataset.py`` (``eval_mask[45:471, 41:601]``).
    """
    mask = np.zeros(shape, dtype=bool)
    mask[NYU_EIGEN_CROP] = True
    return mask


def _read_png_scaled(path: Path, scale: float) -> np.ndarray:
    return read_png_uint16(path).astype(np.float32) / np.float32(scale)


class NYUv2(MarigoldEvalDataset):
    """NYU Depth v2, Eigen test split (654 images), from Marigold's ``nyuv2/nyu_labeled_extracted.tar``.

    * Split list: ``filename_list_test.txt`` (Marigold ``data_split/nyu/labeled/filename_list_test.txt``, named in
      ``config/dataset/data_nyu_test.yaml``). Lines: ``test/<scene>/rgb_NNNN.png test/<scene>/depth_NNNN.png
      test/<scene>/filled_NNNN.png``; the raw ``depth_`` column is scored (Marigold's ``eval.py`` uses
      ``depth_raw_linear``), the in-painted ``filled_`` column is ignored.
    * Depth: 16-bit PNG in millimetres, ``/ 1000`` (``src/dataset/nyu_dataset.py``); valid in (1e-3, 10) m.
    * ``eigen_crop=True`` (``eigen_valid_mask: true`` in the config) scores only :func:`nyu_eigen_crop_mask`; it needs
      480x640 frames, another size is reported as a bad sample.
    * Native processing resolution (``script/eval/11_infer_nyu.sh``: ``--processing_res 0``).
    """

    name = "nyu"
    depth_range = (1e-3, 10.0)
    processing_res = 0
    alignment = "least_squares"
    expected_count = 654
    list_paths: ClassVar[tuple[str, ...]] = ("data_split/nyu/labeled/filename_list_test.txt",)

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike | None = None,
        *,
        eigen_crop: bool = True,
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        self.eigen_crop = bool(eigen_crop)
        super().__init__(root, filename_list, min_depth=min_depth, max_depth=max_depth)

    def _read_depth(self, path: Path) -> np.ndarray:
        return _read_png_scaled(path, 1000.0)

    def _crop_mask(self, depth_path: Path, shape: tuple[int, int]) -> np.ndarray | None:
        if not self.eigen_crop:
            return None
        if tuple(shape) != NYU_FRAME_HW:
            raise SampleReadError(
                depth_path, f"the NYU Eigen crop needs {NYU_FRAME_HW[0]}x{NYU_FRAME_HW[1]} frames, got "
                f"{shape[0]}x{shape[1]} (pass eigen_crop=False for other sizes)"
            )
        return nyu_eigen_crop_mask(shape)


# ------------------------------------------------------------------------------------------------ KITTI
# (top, bottom, left, right) as fractions of the ground-truth height/width, as in BTS's bts_eval.py and Marigold's
# src/dataset/kitti_dataset.py: Garg et al. ECCV 2016 and Eigen et al. NIPS 2014.
KITTI_CROP_FRACTIONS: dict[str, tuple[float, float, float, float]] = {
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}


def kitti_crop_mask(shape: tuple[int, int], crop: str) -> np.ndarray:
    """The Garg or Eigen evaluation crop of a KITTI frame of ``shape``: rows ``int(top*H):int(bottom*H)``, columns
    ``int(left*W):int(right*W)`` with the fractions of :data:`KITTI_CROP_FRACTIONS` (Marigold
    ``src/dataset/kitti_dataset.py``, after BTS)."""
    if crop not in KITTI_CROP_FRACTIONS:
        raise ValueError(f"unknown KITTI crop {crop!r}; choose from {', '.join(KITTI_CROP_FRACTIONS)} or None")
    top, bottom, left, right = KITTI_CROP_FRACTIONS[crop]
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    mask[int(top * h) : int(bottom * h), int(left * w) : int(right * w)] = True
    return mask


class KITTIEigenTest(MarigoldEvalDataset):
    """KITTI, Eigen test split with ground truth (652 of 697 frames), from Marigold's
    ``kitti/kitti_eigen_split_test.tar``.

    * Split list: ``eigen_test_files_with_gt.txt`` (Marigold ``data_split/kitti/eigen_test_files_with_gt.txt``, named
      in ``config/dataset/data_kitti_eigen_test.yaml``; BTS's list). Lines: ``<date>/<drive>_sync/image_02/data/
      <frame>.png <drive>_sync/proj_depth/groundtruth/image_02/<frame>.png <focal>``; the focal column is ignored.
      Lines whose depth column is ``None`` (frames without projected ground truth) are dropped, as Marigold's
      ``KITTIDepthDataset`` does; ``skipped_without_gt`` counts them.
    * Depth: 16-bit PNG, ``/ 256`` m, 0 = no measurement; valid in (1e-5, 80) m (``src/dataset/kitti_dataset.py``).
    * ``kb_crop=True`` (``kitti_bm_crop: true``): the KITTI benchmark crop to 352x1216, bottom rows and centred
      columns, on image and depth; the frame must be at least that large.
    * ``crop="eigen"`` (``valid_mask_crop: eigen``), ``"garg"`` or None: :func:`kitti_crop_mask` on the (cropped)
      frame, as Marigold computes it after the benchmark crop.
    * Native processing resolution (``script/eval/21_infer_kitti.sh``: ``--processing_res 0``).
    """

    name = "kitti"
    depth_range = (1e-5, 80.0)
    processing_res = 0
    alignment = "least_squares"
    expected_count = 652
    list_paths: ClassVar[tuple[str, ...]] = ("data_split/kitti/eigen_test_files_with_gt.txt",)

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike | None = None,
        *,
        crop: str | None = "eigen",
        kb_crop: bool = True,
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        if crop is not None and crop not in KITTI_CROP_FRACTIONS:
            raise ValueError(f"unknown KITTI crop {crop!r}; choose from {', '.join(KITTI_CROP_FRACTIONS)} or None")
        self.crop = crop
        self.kb_crop = bool(kb_crop)
        self.skipped_without_gt = 0
        super().__init__(root, filename_list, min_depth=min_depth, max_depth=max_depth)

    def _read_list(self, path: Path) -> list[Entry]:
        pairs = parse_filename_list(path)
        kept = [tuple(p) for p in pairs if p[1] != "None"]
        self.skipped_without_gt = len(pairs) - len(kept)
        return kept

    def _read_depth(self, path: Path) -> np.ndarray:
        return _read_png_scaled(path, 256.0)

    def _crop(
        self, rgb_path: Path, rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if not self.kb_crop:
            return rgb, depth, valid
        h, w = depth.shape
        ch, cw = KB_CROP_HW
        if h < ch or w < cw:
            raise SampleReadError(rgb_path, f"frame {h}x{w} is smaller than the KITTI benchmark crop {ch}x{cw}")
        top, left = kb_crop_offsets(h, w)
        win = (slice(top, top + ch), slice(left, left + cw))
        return rgb[win], depth[win], None if valid is None else valid[win]

    def _crop_mask(self, depth_path: Path, shape: tuple[int, int]) -> np.ndarray | None:
        return None if self.crop is None else kitti_crop_mask(shape, self.crop)


# ------------------------------------------------------------------------------------------------ ETH3D
ETH3D_RAW_HW = (4032, 6048)


class ETH3D(MarigoldEvalDataset):
    """ETH3D high-resolution multi-view DSLR images (454), from Marigold's ``eth3d/eth3d.tar``.

    * Split list: ``eth3d_filename_list.txt`` (Marigold ``data_split/eth3d/eth3d_filename_list.txt``, named in
      ``config/dataset/data_eth3d.yaml``). Lines: ``rgb/<scene>/images/dslr_images/DSC_NNNN.JPG
      depth/<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/DSC_NNNN.JPG``; the depth file keeps the
      ``.JPG`` name but is raw data.
    * Depth: headerless little-endian float32, ``raw_hw`` = (4032, 6048) row-major, metres, ``inf`` = no measurement
      (``src/dataset/eth3d_dataset.py``; ETH3D's documented format). A file of another byte size is a bad sample.
      Valid in (1e-5, inf) m.
    * Processing resolution 756 with bilinear resampling, least-squares alignment at most 1024 px
      (``script/eval/31_infer_eth3d.sh``, ``32_eval_eth3d.sh: --alignment_max_res 1024``; ``alignment_max_res``).
    """

    name = "eth3d"
    depth_range = (1e-5, math.inf)
    processing_res = 756
    alignment = "least_squares"
    alignment_max_res = 1024
    expected_count = 454
    list_paths: ClassVar[tuple[str, ...]] = ("data_split/eth3d/eth3d_filename_list.txt",)

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike | None = None,
        *,
        raw_hw: tuple[int, int] = ETH3D_RAW_HW,
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        h, w = (int(v) for v in raw_hw)
        if h < 1 or w < 1:
            raise ValueError(f"raw_hw must be positive, got {raw_hw}")
        self.raw_hw = (h, w)
        super().__init__(root, filename_list, min_depth=min_depth, max_depth=max_depth)

    def _read_depth(self, path: Path) -> np.ndarray:
        h, w = self.raw_hw
        want = h * w * 4
        try:
            size = path.stat().st_size
            if size != want:
                raise SampleReadError(
                    path, f"expected {want} bytes (raw float32 {h}x{w} ETH3D depth), got {size}"
                )
            data = path.read_bytes()
        except SampleReadError:
            raise
        except OSError as exc:
            raise SampleReadError(path, f"{type(exc).__name__}: {exc}") from exc
        if len(data) != want:
            raise SampleReadError(path, f"expected {want} bytes, read {len(data)}")
        return np.frombuffer(data, dtype="<f4").reshape(h, w).astype(np.float32)


# ------------------------------------------------------------------------------------------------ ScanNet
class ScanNet(MarigoldEvalDataset):
    """ScanNet validation, 800 frames sampled by Marigold, from Marigold's ``scannet/scannet_val_sampled_800_1.tar``.

    * Split list: ``scannet_val_sampled_list_800_1.txt`` (Marigold ``data_split/scannet/...`` as named in
      ``config/dataset/data_scannet_val.yaml``; newer checkouts keep it in ``data_split/scannet_depth/``). Lines:
      ``sceneNNNN_NN/color/NNNNNN.jpg sceneNNNN_NN/depth/NNNNNN.png``.
    * Depth: 16-bit PNG in millimetres, ``/ 1000``; valid in (1e-3, 10) m (``src/dataset/scannet_dataset.py``). Image
      and depth must have the same size.
    * Native processing resolution (``script/eval/41_infer_scannet.sh``: ``--processing_res 0``).
    """

    name = "scannet"
    depth_range = (1e-3, 10.0)
    processing_res = 0
    alignment = "least_squares"
    expected_count = 800
    list_paths: ClassVar[tuple[str, ...]] = (
        "data_split/scannet/scannet_val_sampled_list_800_1.txt",
        "data_split/scannet_depth/scannet_val_sampled_list_800_1.txt",
    )

    def _read_depth(self, path: Path) -> np.ndarray:
        return _read_png_scaled(path, 1000.0)


# ------------------------------------------------------------------------------------------------ DIODE
def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # missing, truncated, not an .npy, an object array
        raise SampleReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise SampleReadError(path, f"expected one array, got {type(arr).__name__}")
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise SampleReadError(path, f"expected a single-channel HxW array, got shape {arr.shape}")
    return arr


class DIODE(MarigoldEvalDataset):
    """DIODE validation, indoor and outdoor (325 + 446 = 771), from Marigold's ``diode/diode_val.tar``.

    * Split list: ``diode_val_all_filename_list.txt`` (Marigold ``data_split/diode/diode_val_all_filename_list.txt``,
      named in ``config/dataset/data_diode_all.yaml``). Lines: ``<indoors|outdoor>/scene_N/scan_N/<stem>.png
      .../<stem>_depth.npy .../<stem>_depth_mask.npy``; a line without the third column uses
      ``<stem>_depth_mask.npy`` next to the depth file.
    * Depth: ``*_depth.npy`` float metres (HxW or HxWx1); validity: ``*_depth_mask.npy`` (non-zero = valid), as
      Marigold's ``src/dataset/diode_dataset.py`` reads it. Here the mask is also intersected with the depth range
      (0.6, 350) m and finiteness; Marigold uses the mask file alone and applies the range only when clipping the
      prediction, so a pixel the mask file keeps outside (0.6, 350) m would be scored there but not here.
    * Processing resolution 640 with bilinear resampling (``script/eval/51_infer_diode.sh``).
    """

    name = "diode"
    depth_range = (0.6, 350.0)
    processing_res = 640
    alignment = "least_squares"
    expected_count = 771
    list_paths: ClassVar[tuple[str, ...]] = ("data_split/diode/diode_val_all_filename_list.txt",)

    def _read_list(self, path: Path) -> list[Entry]:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "filename list not found", str(path))
        entries: list[Entry] = []
        with path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                cols = line.split()
                if not cols or cols[0].startswith("#"):
                    continue
                if len(cols) == 2:
                    if not cols[1].endswith("_depth.npy"):
                        raise ValueError(f"{path}:{lineno}: no mask column and the depth file is not *_depth.npy")
                    cols.append(cols[1][: -len(".npy")] + "_mask.npy")
                if len(cols) < 3:
                    raise ValueError(f"{path}:{lineno}: expected 'rgb depth.npy depth_mask.npy', got {line.strip()!r}")
                entries.append((cols[0], cols[1], cols[2]))
        return entries

    def _read_depth(self, path: Path) -> np.ndarray:
        arr = _read_npy(path)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise SampleReadError(path, f"expected a real-valued depth array, got dtype {arr.dtype}")
        return arr.astype(np.float32)

    def _own_valid(self, entry: Entry, shape: tuple[int, int]) -> np.ndarray | None:
        path = self.root / entry[2]
        mask = _read_npy(path)
        if mask.shape != tuple(shape):
            raise SampleReadError(path, f"mask size {mask.shape[0]}x{mask.shape[1]} does not match the depth "
                                        f"{shape[0]}x{shape[1]}")
        return mask.astype(bool)


class DIODEIndoor(DIODE):
    """The 325 indoor scans of DIODE validation: list ``diode_val_indoor_filename_list.txt`` (Marigold
    ``data_split/diode/diode_val_indoor_filename_list.txt``); otherwise as :class:`DIODE`."""

    name = "diode-indoor"
    expected_count = 325
    list_paths: ClassVar[tuple[str, ...]] = ("data_split/diode/diode_val_indoor_filename_list.txt",)


class DIODEOutdoor(DIODE):
    """The 446 outdoor scans of DIODE validation: list ``diode_val_outdoor_filename_list.txt`` (Marigold
    ``data_split/diode_depth/diode_val_outdoor_filename_list.txt``); otherwise as :class:`DIODE`."""

    name = "diode-outdoor"
    expected_count = 446
    list_paths: ClassVar[tuple[str, ...]] = (
        "data_split/diode_depth/diode_val_outdoor_filename_list.txt",
        "data_split/diode/diode_val_outdoor_filename_list.txt",
    )


# ------------------------------------------------------------------------------------------------ a user's folder
class FolderDataset(MarigoldEvalDataset):
    """A user's own RGB-D pairs (:mod:`agdepth.data.folder`, the reader training uses too): ``ROOT/rgb/NAME.<image>``
    with ``ROOT/depth/NAME.<png|npy|tif|tiff|exr>``, matched by name (or the two-column ``--filename-list``, paths
    relative to ROOT), optionally ``ROOT/mask/NAME.png`` (nonzero = scored).

    * Depth: a 16-bit PNG times ``depth_scale`` (0.001 for millimetres), or float ``.npy`` / TIFF / EXR times
      ``depth_scale``; 0, NaN and inf are invalid. ``disparity=True``: the files hold disparity, depth = depth_scale /
      value (e.g. the stereo baseline × focal length).
    * An image without a depth partner stays in the list and fails as a missing sample, named; pairs of different
      sizes fail as bad samples.
    * Processing resolution: the model's default; depth range (1e-3, 1000) m unless --min/--max-depth say otherwise.
    """

    name = "folder"
    depth_range = (1e-3, 1000.0)
    processing_res = None
    alignment = "least_squares"
    dense = False

    def __init__(self, root: PathLike, filename_list: PathLike | None = None, *, depth_scale: float = 1.0,
                 disparity: bool = False, min_depth: float | None = None, max_depth: float | None = None) -> None:
        try:
            self.encoding = DepthEncoding(float(depth_scale), bool(disparity))
        except ValueError as e:
            raise ValueError(f"folder: {e}") from None
        super().__init__(root, filename_list, min_depth=min_depth, max_depth=max_depth)

    def _find_list(self, filename_list: PathLike | None) -> Path:
        if filename_list is not None:
            return super()._find_list(filename_list)
        if not (self.root / "rgb").is_dir():
            raise FileNotFoundError(errno.ENOENT, "folder dataset: no rgb/ folder (or pass --filename-list)",
                                    str(self.root / "rgb"))
        return self.root / "rgb"

    def _read_list(self, path: Path) -> list[Entry]:
        return [tuple(p) for p in discover_pairs(self.root, path if path.is_file() else None)]

    def _read_depth(self, path: Path) -> np.ndarray:
        return read_depth_file(path, self.encoding)

    def _own_valid(self, entry: Entry, shape: tuple[int, int]) -> np.ndarray | None:
        return read_mask_file(self.root, entry[0], shape)


READERS: tuple[type[MarigoldEvalDataset], ...] = (NYUv2, KITTIEigenTest, ETH3D, ScanNet, DIODE, DIODEIndoor,
                                                DIODEOutdoor, FolderDataset)
