"""Dead leaves, a row of the paper's Table 1 (section 3.2.1, Figure 4): occluding discs.

The paper gives no parameters for its "layered occluding circles, drawn from a
power law distribution over scales" (Theis et al. 2012's data). Here discs follow
Lee, Mumford and Huang's (2001) scale-invariant model: radii of density r^-3 on
[r_min, r_max], centres uniform over the image and a margin of r_max, grey levels
uniform, discs drawn front to back until every pixel is covered. Every image is
drawn afresh from (seed, index): there is no fixed training set.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import errors
from dpm_jax import images
from dpm_jax import plotting
from dpm_jax import sampling

C = config_lib
DATA = C.Section(
    source=("dead_leaves", C.choice("dead_leaves"), "drawn afresh from (seed, index): no fixed "
            "training set"),
    dataset=("dead_leaves", C.choice("dead_leaves"), "the generator"),
    draw_size=(128, C.integer(1), "drawn images' width: training and testing take its tiles"),
    r_min=(1.0, C.real(0, lo_open=True), "smallest radius, pixels (a choice: the paper gives "
           "none)"),
    r_max=(32.0, C.real(0, lo_open=True), "largest radius, pixels (a choice: the paper gives "
           "none)"),
    exponent=(3.0, C.real(1, lo_open=True), "radius density r^-exponent: 3 is scale invariant "
              "(Lee et al. 2001)"),
    examples_per_epoch=(100000, C.integer(1), "training examples an 'epoch' counts (the "
                        "learning-rate decay)"),
    num_test=(512, C.integer(2), "held-out examples (fixed draws) of the periodic bound"),
    **images.UNITS,
)
# Seeds of the test examples and the final report, apart from the training draws.
TEST_SEED_OFFSET, REPORT_SEED_OFFSET = 1_000_003, 2_000_003


def radii(rng: np.random.Generator, n: int, r_min: float, r_max: float,
          exponent: float) -> np.ndarray:
  """n radii of density proportional to r^-exponent on [r_min, r_max] (inverse CDF)."""
  a = 1.0 - exponent
  u = rng.random(n)
  return (r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a)


def _stencils(r_max: float) -> list:
  """(R, dy, dx): the offsets of a (2R + 1)^2 square, for R = 1, 2, 4, ... >= r_max."""
  out, R = [], 1
  while True:
    dy, dx = np.mgrid[-R:R + 1, -R:R + 1]
    out.append((R, dy.ravel(), dx.ravel()))
    if R >= r_max:
      return out
    R *= 2


def draw(rng: np.random.Generator, size: int, *, r_min: float, r_max: float,
         exponent: float) -> np.ndarray:
  """One dead-leaves image, uint8 (size, size).

  Drawn front to back in rounds of discs: a pixel takes the first disc that covers
  it, a later round fills only what is still uncovered. Each disc is rasterised on
  a stencil no smaller than itself.
  """
  value = np.full(size * size, -1.0)
  r = np.geomspace(r_min, r_max, 512)  # E[r^2] under the density, numerically
  w = r**-exponent * np.gradient(r)
  mean_area = np.pi * np.sum(w * r**2) / np.sum(w)
  n = int(4 * size * size / mean_area) + 64  # discs a round: about four coats
  stencils = _stencils(r_max)
  while (value < 0).any():
    r = radii(rng, n, r_min, r_max, exponent)
    cy, cx = rng.uniform(-r_max, size + r_max, (2, n))
    grey = rng.random(n)
    pixels, discs, low = [], [], 0.0
    for R, dy, dx in stencils:
      idx = np.flatnonzero((r > low) & (r <= R))
      low = R
      if not idx.size:
        continue
      py = np.floor(cy[idx])[:, None].astype(np.int64) + dy[None, :]
      px = np.floor(cx[idx])[:, None].astype(np.int64) + dx[None, :]
      inside = (((py - cy[idx, None])**2 + (px - cx[idx, None])**2 <= r[idx, None]**2)
                & (py >= 0) & (py < size) & (px >= 0) & (px < size))
      pixels.append((py * size + px)[inside])
      discs.append(np.broadcast_to(idx[:, None], inside.shape)[inside])
    pixels, discs = np.concatenate(pixels), np.concatenate(discs)
    open_ = value[pixels] < 0
    pixels, discs = pixels[open_], discs[open_]
    order = np.lexsort((discs, pixels))  # by pixel, then by disc: the first disc first
    first = np.unique(pixels[order], return_index=True)[1]
    value[pixels[order][first]] = grey[discs[order][first]]
  return np.round(value.reshape(size, size) * 255).astype(np.uint8)


class DeadLeavesImages(data_lib.Examples):
  """Crops of freshly drawn dead-leaves images: example i is crop i mod k of draw i // k,
  the k = (draw_size / width)^2 tiles of a draw_size image; drawn from (seed, i // k)."""

  def __init__(self, data_config: ml_collections.ConfigDict, width: int, seed: int,
               length: int):
    d = data_config
    self.params = dict(r_min=float(d.r_min), r_max=float(d.r_max), exponent=float(d.exponent))
    self.draw_size, self.width, self.seed, self.length = d.draw_size, width, seed, length
    self.tiles = (d.draw_size // width) ** 2
    self._last = (None, None)

  def __len__(self) -> int:
    return self.length

  @property
  def example_shape(self) -> tuple:
    return (self.width, self.width, 1)

  def fingerprint(self) -> str:
    return hashlib.sha256(repr((sorted(self.params.items()), self.draw_size, self.width,
                                self.seed, self.length)).encode()).hexdigest()

  def image(self, j: int) -> np.ndarray:
    """Draw j, (draw_size, draw_size); the last one is kept for its other tiles."""
    if self._last[0] != j:
      self._last = (j, draw(np.random.default_rng([self.seed, j]), self.draw_size,
                            **self.params))
    return self._last[1]

  def example(self, index: int) -> np.ndarray:
    j, tile = divmod(index, self.tiles)
    per_row = self.draw_size // self.width
    y, x = (tile // per_row) * self.width, (tile % per_row) * self.width
    return self.image(j)[y:y + self.width, x:x + self.width, None]

  def tiles_of(self, j: int) -> np.ndarray:
    """The examples of draw j, (tiles, width, width, 1): examples j k .. (j + 1) k - 1."""
    return np.stack([self.example(j * self.tiles + t) for t in range(self.tiles)])

  def batches(self, batch_size: int, seed: int, start_step: int, *, process_index: int = 0,
              process_count: int = 1, workers: int = 0):
    """Step s takes examples s B .. (s + 1) B - 1: whole draws, so each is made once."""
    import grain  # pylint: disable=g-import-not-at-top
    del seed  # the draws' seed is the examples' own
    local = batch_size // process_count
    if local % self.tiles:
      raise errors.UserError(
          f"The per-process batch {local} is not a whole number of draws of {self.tiles} "
          "examples; choose train.batch_size a multiple of (data.draw_size / "
          "model.spatial_width)^2 per process.")
    shape = (local,) + self.example_shape
    ds = grain.MapDataset.range(2**62).map(self.tiles_of).batch(local // self.tiles)
    ds = ds.map(lambda draws: draws.reshape(shape))[process_index::process_count][start_step:]
    return data_lib.prefetch(ds, workers)


def check_data(config: ml_collections.ConfigDict) -> None:
  """The draws' size against the training crops and the final report's images."""
  d = config.data
  for what, w in (("model.spatial_width", config.model.spatial_width),
                  ("final_eval.image_size", config.final_eval.image_size)):
    if d.draw_size % w:
      raise errors.UserError(
          f"data.draw_size={d.draw_size} must be a multiple of {what}={w}: the examples are "
          "its tiles.")
  if d.r_min >= d.r_max:
    raise errors.UserError(f"data.r_min={d.r_min} must be below data.r_max={d.r_max}.")


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  d, width = config.data, config.model.spatial_width
  train = DeadLeavesImages(d, width, config.seed, d.examples_per_epoch)
  test = DeadLeavesImages(d, width, config.seed + TEST_SEED_OFFSET, d.num_test)
  return data_lib.Dataset(train, test, "dead_leaves", {
      "source": "dead_leaves", "drawn": "afresh from (seed, index)",
      **{k: d[k] for k in ("draw_size", "r_min", "r_max", "exponent")}})


def report_examples(config: ml_collections.ConfigDict, num: int, seed: int) -> np.ndarray:
  """Tiles of final_eval.image_size of fresh draw_size draws (as training's, larger)."""
  fresh = DeadLeavesImages(config.data, config.final_eval.image_size,
                           config.seed + REPORT_SEED_OFFSET + seed, num)
  return fresh[:num]


def figures(task, params: Any, examples: np.ndarray, workdir: str, key) -> list:
  """Figure 4: fresh training-size draws beside samples drawn at the report's larger size."""
  n = 4
  samples = sampling.generate(task.model, params, task.units, "sample", key, num_images=n,
                              image_size=examples.shape[1:3])["samples"]
  size = examples.shape[1]
  return [plotting.save_image_panels(
      [examples[:n] / 255.0, samples],
      [f"data: fresh draws, {size} px", f"samples, {size} px (trained on "
       f"{task.model.config.spatial_width} px crops)"], os.path.join(workdir, "figure4.png"),
      ncols=2)]


DEAD_LEAVES = images.ImageExperiment(
    "dead_leaves", "dead leaves of Table 1 and Figure 4 (occluding discs)",
    model_defaults=dict(images.CONVOLUTIONAL, trajectory_length=1000),  # paper Appendix D.2.1
    data=DATA, load=load_data, check_data=check_data,
    # arXiv 1503.03585 v8, Table 1: bits per pixel.
    report=images.Report({"K_bits": 1.489, "K_minus_L_null_bits": 3.536}, "fresh",
                         report_examples, figures))
