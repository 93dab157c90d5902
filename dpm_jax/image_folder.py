"""Your own images: a folder of PNG and JPEG files (data.dir, searched recursively).

data.folder_mode 'resize' is the reference code's IMAGENET stream (imagenet_data.py):
the files split 90/10 with a fixed seed, each padded square and resized. 'crops'
takes random spatial_width crops, the test crops at fixed places from the held-out
files, or from the right-hand columns of a single image. Images of any size are
converted to model.n_colors channels; damaged files are skipped and counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from typing import Mapping, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np

from dpm_jax import data as data_lib
from dpm_jax import errors

EXTENSIONS = (".png", ".jpg", ".jpeg")
MODES = ("resize", "crops")
# Decoded files kept per process: a crop takes a small part of one.
DECODED_CACHE = 8
# Seeds of the file split (the reference code's) and of the test crops' places.
SPLIT_SEED = 12345
TEST_CROP_SEED = 54321


class _Unreadable(Exception):
  """A file that Pillow cannot read or decode."""


def find_images(folder: str) -> list:
  """Paths (relative to folder) of the PNG and JPEG files below it, sorted.

  Raises:
    errors.UserError: no such folder, or no image in it.
  """
  if not folder:
    raise errors.UserError("data.source='folder' needs data.dir, the folder of your images "
                             "(PNG or JPEG, any size, searched recursively).")
  if not os.path.isdir(folder):
    raise errors.UserError(f"data.dir={folder!r} is not a folder; point it at the folder of "
                             "your images (PNG or JPEG, searched recursively).")
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.relpath(os.path.join(root, f), folder) for f in sorted(files)
              if f.lower().endswith(EXTENSIONS)]
  if not found:
    raise errors.UserError(f"No PNG or JPEG images in {folder} (searched recursively); put "
                             "your images there, or point data.dir at their folder.")
  return found


@contextlib.contextmanager
def _open(path: str):
  """The opened image; whatever fails in the block raises _Unreadable."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      yield im
  except Exception as err:  # pylint: disable=broad-except
    raise _Unreadable(f"{type(err).__name__}: {err}") from err


def image_size(path: str) -> tuple:
  """(width, height) from the header; checks the structure (PNG: each chunk's CRC)."""
  with _open(path) as im:
    size = im.size
    im.verify()
  return size


def decode(path: str, n_colors: int) -> np.ndarray:
  """The image as uint8 (H, W, n_colors), whatever it was stored as."""
  with _open(path) as im:
    array = np.asarray(im.convert("L" if n_colors == 1 else "RGB"), np.uint8)
  return array[..., None] if array.ndim == 2 else array


def pad_and_resize(image: np.ndarray, width: int) -> np.ndarray:
  """Pads to a square with black borders of (long - short) // 2 on both short sides,
  then resizes bicubically to width x width (the reference code's IMAGENET)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w, c = image.shape
  pad = abs(h - w) // 2
  padding = ((pad, pad), (0, 0), (0, 0)) if w > h else ((0, 0), (pad, pad), (0, 0))
  square = np.pad(image, padding)
  pil = Image.fromarray(square[..., 0] if c == 1 else square)
  out = np.asarray(pil.resize((width, width), Image.BICUBIC), np.uint8)
  return out[..., None] if out.ndim == 2 else out


@dataclasses.dataclass(frozen=True)
class Region:
  """The columns [start, stop) of an image that a split may crop from (None: all)."""
  start: float = 0.0
  stop: float = 1.0


class FolderImages(data_lib.Examples):
  """Example i: file i resized (resize), or a crop of file i mod n_files at a place
  drawn from (seed, i) within the file's region (crops, crops_per_image an epoch).
  A file that fails to decode is replaced by the next one and counted in `failures`.
  """

  def __init__(self, root: str, files: Sequence[str], *, mode: str, width: int, n_colors: int,
               seed: int, crops_per_image: int = 1, region: Region = Region()):
    self.root, self.files = root, list(files)
    self.mode, self.width, self.n_colors, self.seed = mode, width, n_colors, seed
    self.crops_per_image = crops_per_image if mode == "crops" else 1
    self.region = region
    self.failures = 0
    self._decoded = {}

  def __len__(self) -> int:
    return len(self.files) * self.crops_per_image

  @property
  def example_shape(self) -> tuple:
    return (self.width, self.width, self.n_colors)

  def __repr__(self) -> str:
    return (f"FolderImages({self.root!r}, {len(self.files)} files, {self.mode}, "
            f"{self.width}px, region {self.region})")

  def fingerprint(self) -> str:
    h = hashlib.sha256(repr((self.mode, self.width, self.n_colors, self.seed,
                             self.crops_per_image, self.region)).encode())
    for name in self.files:  # the name's bytes as the file system holds them
      h.update(os.fsencode(name) + f":{os.path.getsize(os.path.join(self.root, name))};".encode())
    return h.hexdigest()

  def _file(self, i: int) -> np.ndarray:
    if i not in self._decoded:
      if len(self._decoded) >= DECODED_CACHE:
        self._decoded.pop(next(iter(self._decoded)))
      self._decoded[i] = decode(os.path.join(self.root, self.files[i]), self.n_colors)
    return self._decoded[i]

  def __getstate__(self):  # worker processes decode for themselves
    return {**self.__dict__, "_decoded": {}}

  def _crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w, _ = image.shape
    lo, hi = int(round(self.region.start * w)), int(round(self.region.stop * w))
    y = int(rng.integers(0, h - self.width + 1))
    x = int(rng.integers(lo, hi - self.width + 1))
    return image[y:y + self.width, x:x + self.width]

  def example(self, index: int) -> np.ndarray:
    for attempt in range(len(self.files)):
      i = (index + attempt * self.crops_per_image) % len(self)
      try:
        image = self._file(i % len(self.files))
      except _Unreadable as err:
        self.failures += 1
        logging.warning("Skipping %s: %s", shown(self.files[i % len(self.files)]), err)
        continue
      if self.mode == "resize":
        return pad_and_resize(image, self.width)
      return self._crop(image, np.random.default_rng([self.seed, index]))
    raise errors.UserError(f"No image in {self.root} can be decoded any more; check the files.")


def _split(files: Sequence[str], test_fraction: float) -> tuple:
  """(train, test) files: the reference code's shuffle with a fixed seed, at least one each."""
  order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
  n_train = min(max(int(round((1 - test_fraction) * len(files))), 1), len(files) - 1)
  return [files[i] for i in sorted(order[:n_train])], [files[i] for i in sorted(order[n_train:])]


def shown(name: str) -> str:
  """A file name as text, its bytes that are not UTF-8 written as \\xNN (a name from
  os.listdir holds them as surrogates, which no UTF-8 stream or JSON file takes)."""
  return os.fsencode(name).decode("utf-8", "backslashreplace")


def check_files(folder: str, files: Sequence[str]) -> tuple:
  """(readable files, their (width, height), damaged files)."""
  readable, sizes, damaged = [], [], []
  for name in files:
    try:
      sizes.append(image_size(os.path.join(folder, name)))
      readable.append(name)
    except _Unreadable as err:
      damaged.append(name)
      logging.warning("Skipping the damaged image %s: %s", shown(os.path.join(folder, name)), err)
  return readable, sizes, damaged


def _files(data_config: ml_collections.ConfigDict, crops: Mapping[str, int]) -> tuple:
  """(folder, readable files, their sizes, damaged files), checked for every crop the
  run takes: `crops` maps what sets each width ('model.spatial_width' first: the
  training crop) to the width."""
  d = data_config
  folder = os.path.abspath(os.path.expanduser(d.dir)) if d.dir else ""
  files, sizes, damaged = check_files(folder, find_images(folder))
  if not files:
    raise errors.UserError(f"Every image in {folder} is damaged ({len(damaged)} files, e.g. "
                             f"{shown(damaged[0])}): none can be decoded. Replace the files.")
  setting, width = max(crops.items(), key=lambda item: item[1])
  if d.folder_mode == "crops":
    small = [f for f, (w, h) in zip(files, sizes) if min(w, h) < width]
    if small:
      raise errors.UserError(
          f"{len(small)} image(s) in {folder} (e.g. {shown(small[0])}, "
          f"{sizes[files.index(small[0])]}) "
          f"are smaller than the {width} x {width} crop of {setting}: use larger images, lower "
          "that width, or use data.folder_mode='resize'.")
  if len(files) == 1:
    if d.folder_mode != "crops":
      raise errors.UserError(f"{folder} holds one image: resize mode needs several to hold "
                               "some out; use data.folder_mode='crops', which holds out a "
                               "region of it.")
    w, train_width = sizes[0][0], next(iter(crops.values()))
    if round(d.holdout_fraction * w) < width or round((1 - d.holdout_fraction) * w) < train_width:
      raise errors.UserError(
          f"The image in {folder} is {w} pixels wide: its training region must hold a "
          f"{train_width}-pixel crop and its held-out {d.holdout_fraction:g} a {width}-pixel "
          f"crop ({setting}); change data.holdout_fraction or that width.")
  return folder, files, sizes, damaged


def held_out(data_config: ml_collections.ConfigDict, *, width: int, n_colors: int, count: int,
             seed: int = TEST_CROP_SEED) -> FolderImages:
  """`count` held-out examples of a given width: crops at fixed places (crops mode) from
  the held-out images or region, or the held-out images resized (resize mode)."""
  folder, files, _, _ = _files(data_config, {"the held-out crop": width})
  return _part(data_config, folder, files, True, count, width=width, n_colors=n_colors,
               seed=seed)


def _part(d, folder, files, test: bool, count: int, **kwargs) -> FolderImages:
  """The training or test part: files of the split, or a region of a single image."""
  if len(files) == 1:
    cut = 1.0 - d.holdout_fraction
    return FolderImages(folder, files, mode=d.folder_mode, crops_per_image=count,
                        region=Region(cut, 1.0) if test else Region(0.0, cut), **kwargs)
  train_files, test_files = _split(files, d.test_fraction)
  files = test_files if test else train_files
  per_image = max(1, count // len(files)) if test else count
  return FolderImages(folder, files, mode=d.folder_mode, crops_per_image=per_image, **kwargs)


def load(data_config: ml_collections.ConfigDict, *, width: int, n_colors: int, seed: int,
         later_crops: Optional[Mapping[str, int]] = None) -> data_lib.Dataset:
  """The training and test examples (width x width) of an image folder.

  Args:
    later_crops: widths of held-out crops the run takes later (its final report), by
      what sets each, checked now so that a run never fails after training.

  Raises:
    errors.UserError: no folder, no images, only damaged ones, or images smaller
      than a crop; the message names the folder, the setting and the fix.
  """
  d = data_config
  folder, files, _, damaged = _files(d, {"model.spatial_width": width, **(later_crops or {})})
  train = _part(d, folder, files, False, d.crops_per_image, width=width, n_colors=n_colors,
                seed=seed)
  test = _part(d, folder, files, True, d.test_crops, width=width, n_colors=n_colors,
               seed=TEST_CROP_SEED)
  if damaged:
    logging.warning("%d of %d files in %s are damaged and skipped (data_stats.json lists them).",
                    len(damaged), len(damaged) + len(files), folder)
  provenance = {"source": "folder", "dir": folder, "folder_mode": d.folder_mode,
                "num_files": len(files), "damaged_files": len(damaged),
                "damaged": [shown(name) for name in damaged[:20]],
                "stats_from": f"{min(data_lib.STATS_EXAMPLES, len(train))} training examples "
                              "(a fixed sample)"}
  return data_lib.Dataset(train, test, os.path.basename(folder.rstrip(os.sep)) or "folder",
                          provenance)
