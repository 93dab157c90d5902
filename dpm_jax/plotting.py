"""Image grids and learning curves as PNG files.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so
writing them never changes the backend of an interactive session.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np


def _figure(**kwargs):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def _imsave(path, image, **kwargs):
  from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top
  mpl_image.imsave(path, image, **kwargs)


def image_grid(images, ncols: Optional[int] = None, pad: int = 1) -> np.ndarray:
  """Tiles (N, H, W, C) images in [0, 1] into one (rows*H, cols*W, C) array, clipped."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def save_image_grid(images, path: str, ncols: Optional[int] = None, scale: int = 2) -> str:
  """Writes a PNG grid of (N, H, W, C) images in [0, 1]; returns the path."""
  grid = image_grid(images, ncols)
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if grid.shape[-1] == 1:
    _imsave(path, grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    _imsave(path, grid)
  return path


def save_trajectory_grid(states, labels: Sequence[str], path: str, scale: int = 2) -> str:
  """One row per image, one column per recorded time step, labelled on top.

  Args:
    states: (K, N, H, W, C) in [0, 1], K recorded steps.
    labels: K column labels.
    path: the PNG to write.
    scale: integer upscaling of the pixels.
  """
  states = np.asarray(states)
  k, n = states.shape[:2]
  tiles = np.transpose(states, (1, 0, 2, 3, 4)).reshape((n * k,) + states.shape[2:])
  grid = image_grid(tiles, ncols=k)
  height, width = grid.shape[:2]
  fig = _figure(figsize=(width * scale / 100, (height * scale + 24) / 100), dpi=100)
  ax = fig.add_axes([0, 0, 1, height * scale / (height * scale + 24)])
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
            interpolation="nearest")
  ax.axis("off")
  cell = grid.shape[1] / k
  for i, label in enumerate(labels):
    ax.text((i + 0.5) * cell, -2, label, ha="center", va="bottom", fontsize=7)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  return path


def plot_learning_curves(records: Sequence[dict], path: str) -> Optional[str]:
  """Train and eval bound (bits/pixel) against step from metrics.jsonl records."""
  train = [(r["step"], r["train/loss"]) for r in records
           if "train/loss" in r and np.isfinite(r["train/loss"])]
  evals = [(r["step"], r["eval/loss"], r.get("eval/loss_stderr", 0.0)) for r in records
           if "eval/loss" in r]
  if not train and not evals:
    return None
  fig = _figure(figsize=(6, 4), dpi=100)
  ax = fig.subplots()
  if train:
    s, v = zip(*train)
    ax.plot(s, v, label="train (one t per batch)", lw=1)
  if evals:
    s, v, e = zip(*evals)
    ax.errorbar(s, v, yerr=e, label="test (+- standard error)", marker="o", ms=3, lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel("-(K - L_null), bits/pixel")
  ax.set_title("Bound on the negative log likelihood relative to N(0, I)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  return path


def plot_kl_per_t(t, kl, path: str) -> str:
  """The per-t KL curve of the all-t evaluation."""
  fig = _figure(figsize=(6, 3.5), dpi=100)
  ax = fig.subplots()
  ax.semilogy(t, np.maximum(kl, 1e-12), lw=1)
  ax.set_xlabel("t")
  ax.set_ylabel("E KL(q || p), nats per dimension")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  return path
