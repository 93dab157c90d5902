"""Trains the texture model (the paper's bark row of Table 1, Figure 5), then reports.

  python -m experiments.texture --config=experiments/configs/texture.py --workdir=runs/texture

Writes <workdir>/eval.json (K, K - L_null and their standard errors in bits per
pixel, exact over t, on held-out crops larger than the training crops, beside
the paper's bark row), kl_per_t_fresh.png and figure5.png (a held-out region,
its centre replaced by noise, the centre inpainted).
"""

import functools

from . import common

run = functools.partial(common.training_run, "texture", __doc__)

if __name__ == "__main__":
  common.cli(run)
