"""A texture: the paper's bark row of Table 1 and its Figure 5 inpainting.

The paper's bark textures (T01-T04 of Lazebnik, Schmid and Ponce 2005) cannot
be redistributed; this trains on a CC0 photograph of gravel, or on data.dir,
with the image folder's crops: training crops from the left three quarters,
held-out crops and the inpainting from the right quarter. K differs from the
bark row in kind (another texture), not just in value.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from dpm_jax import image_folder
from dpm_jax import images
from dpm_jax import plotting
from dpm_jax import sampling

TEXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "textures")


def report_examples(config: ml_collections.ConfigDict, num: int, seed: int) -> np.ndarray:
  """Held-out crops of final_eval.image_size, at fixed places."""
  return image_folder.held_out(config.data, width=config.final_eval.image_size,
                               n_colors=config.model.n_colors, count=num,
                               seed=image_folder.TEST_CROP_SEED + seed)[:num]


def figure5_width(config: ml_collections.ConfigDict) -> int:
  """Figure 5's held-out region: three training crops wide."""
  return 3 * config.model.spatial_width


def figures(task, params: Any, examples: np.ndarray, workdir: str, key) -> list:
  """Figure 5: a held-out region three crops wide, its central third replaced by
  noise, and that centre inpainted (paper section 2.5)."""
  del examples
  config, m = task.config, task.config.model
  region = image_folder.held_out(config.data, width=figure5_width(config), n_colors=m.n_colors,
                                 count=1)[:1]
  size = region.shape[1]
  n = 2
  out = sampling.generate(task.model, params, task.units, "inpaint", key, num_images=n,
                          true_images=np.repeat(region, n, 0), mask_kind="box",
                          box=sampling.central_box(size, size))
  return [plotting.save_image_panels(
      [out["true"][:1], out["observed"][:1], out["samples"]],
      [f"held out, {size} px", "centre: noise", f"centre inpainted ({n} draws)"],
      os.path.join(workdir, "figure5.png"), ncols=n)]


TEXTURE = images.ImageExperiment(
    "texture", "a texture (gravel; the paper's bark row and Figure 5)",
    # T = 500, as the paper's bark (Appendix D.2.1).
    model_defaults=dict(images.CONVOLUTIONAL, trajectory_length=500),
    data_defaults=dict(source="folder", dir=TEXTURES, folder_mode="crops",
                       crops_per_image=10000, test_crops=512, holdout_fraction=0.25),
    # arXiv 1503.03585 v8, Table 1, bark: bits per pixel.
    report=images.Report({"K_bits": -0.55, "K_minus_L_null_bits": 1.5}, "held_out",
                         report_examples, figures, crops=lambda config: {
                             "final_eval.image_size": config.final_eval.image_size,
                             "Figure 5's region, 3 x model.spatial_width": figure5_width(config)}))
