"""Image grids and learning curves as PNG files, written atomically.

Figures use matplotlib's Figure without pyplot, so that writing them never
changes the backend of an interactive session.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from dpm_jax import outputs


def _figure(**kwargs):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def _imsave(path, image, **kwargs) -> str:
  """Writes an image array as a PNG; NaN or Inf in it is an error."""
  from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top
  outputs.require_finite(path, image=image)
  with outputs.atomic_path(path) as tmp:
    mpl_image.imsave(tmp, image, format="png", **kwargs)
  return path


def _savefig(fig, path, **kwargs) -> str:
  with outputs.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", **kwargs)
  return path


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
  """A PNG grid of (N, H, W, C) images in [0, 1]."""
  grid = image_grid(images, ncols)
  grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  if grid.shape[-1] == 1:
    return _imsave(path, grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  return _imsave(path, grid)


def save_trajectory_grid(states, labels: Sequence[str], path: str, scale: int = 2) -> str:
  """One row per image, one column per recorded time step, labelled on top.

  Args:
    states: (K, N, H, W, C) in [0, 1], K recorded steps.
    labels: K column labels.
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
  return _savefig(fig, path)


def plot_learning_curves(records: Sequence[dict], path: str, unit: str = "pixel") -> Optional[str]:
  """Train and eval bound (bits per unit) against step from metrics.jsonl records
  (null values left out); None if there is none."""
  train = [(r["step"], r["train/loss"]) for r in records if r.get("train/loss") is not None]
  evals = [(r["step"], r["eval/loss"], r.get("eval/loss_stderr") or 0.0) for r in records
           if r.get("eval/loss") is not None]
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
  ax.set_ylabel(f"-(K - L_null), bits/{unit}")
  ax.set_title("Bound on the negative log likelihood relative to the null model")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return _savefig(fig, path)


def plot_kl_per_t(t, kl, path: str) -> str:
  """The per-t KL curve of the all-t evaluation, nats per dimension."""
  fig = _figure(figsize=(6, 3.5), dpi=100)
  ax = fig.subplots()
  ax.semilogy(t, np.maximum(kl, 1e-12), lw=1)
  ax.set_xlabel("t")
  ax.set_ylabel("E KL(q || p), nats per dimension")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _savefig(fig, path)


def save_binary_rows(rows, path: str, scale: int = 8) -> str:
  """Binary sequences (N, L) as N rows of L bins: 1 black, 0 white."""
  image = 1.0 - np.clip(np.asarray(rows, np.float32), 0.0, 1.0)
  image = image.repeat(scale, axis=0).repeat(scale, axis=1)
  return _imsave(path, image, cmap="gray", vmin=0.0, vmax=1.0)


def save_image_panels(panels: Sequence, titles: Sequence[str], path: str,
                      ncols: Optional[int] = None) -> str:
  """Side-by-side panels, each a grid of (N, H, W, C) images in [0, 1], titled."""
  fig = _figure(figsize=(3.2 * len(panels), 3.6))
  for i, (images, title) in enumerate(zip(panels, titles)):
    grid = image_grid(images, ncols=ncols)
    ax = fig.add_subplot(1, len(panels), i + 1)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  return _savefig(fig, path, dpi=100)


def save_binary_panels(panels: Sequence, titles: Sequence[str], path: str) -> str:
  """Side-by-side panels of binary sequences (each (N, L)), titled; 1 is black."""
  fig = _figure(figsize=(2.6 * len(panels), 4.5))
  for i, (rows, title) in enumerate(zip(panels, titles)):
    ax = fig.add_subplot(1, len(panels), i + 1)
    ax.imshow(np.asarray(rows), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest",
              aspect="auto")
    ax.set(title=title, xlabel="bin", ylabel="sample" if i == 0 else None)
  fig.tight_layout()
  return _savefig(fig, path, dpi=100)


def save_pictures(paths: Sequence[str], titles: Sequence[str], path: str) -> str:
  """PNG files side by side, one row each, titled: a figure of figures."""
  from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top
  pictures = [mpl_image.imread(p) for p in paths]
  fig = _figure(figsize=(8, sum(3.2 * p.shape[0] / p.shape[1] + 0.4 for p in pictures)))
  for i, (picture, title) in enumerate(zip(pictures, titles)):
    ax = fig.add_subplot(len(pictures), 1, i + 1)
    ax.imshow(picture)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  return _savefig(fig, path, dpi=120)


def save_scatter(points, path: str, title: str = "") -> str:
  """2-D points as a scatter plot on [-2.5, 2.5]^2."""
  fig = _figure(figsize=(4, 4))
  ax = fig.add_subplot(1, 1, 1)
  pts = np.asarray(points)
  ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
  ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), title=title, aspect="equal")
  fig.tight_layout()
  return _savefig(fig, path, dpi=100)


def save_figure_1(forward, reverse, drift, labels: Sequence[str], path: str) -> str:
  """The paper's Figure 1: forward samples, reverse samples and the drift, in columns.

  Args:
    forward, reverse: sequences of (N, 2) points, one per column.
    drift: per column, (grid points (M, 2), drift vectors mu(x_t, t) - x_t (M, 2)).
    labels: column titles.
  """
  n = len(labels)
  fig = _figure(figsize=(3.2 * n, 9.6))
  for col in range(n):
    for row, (pts, name) in enumerate(((forward[col], "q(x_t)"), (reverse[col], "p(x_t)"))):
      ax = fig.add_subplot(3, n, row * n + col + 1)
      pts = np.asarray(pts)
      ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
      ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal",
             title=f"{name}, {labels[col]}")
    ax = fig.add_subplot(3, n, 2 * n + col + 1)
    grid, vectors = (np.asarray(a) for a in drift[col])
    ax.quiver(grid[:, 0], grid[:, 1], vectors[:, 0], vectors[:, 1], angles="xy",
              scale_units="xy", scale=1.0, width=0.004)
    ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal",
           title=f"drift mu(x_t, t) - x_t, {labels[col]}")
  fig.tight_layout()
  return _savefig(fig, path, dpi=100)
