"""Trains the dead leaves model of the paper's Table 1 and Figure 4, then reports its bound.

  python -m experiments.dead_leaves --config=experiments/configs/dead_leaves.py --workdir=runs/dead_leaves

Writes <workdir>/eval.json (K, K - L_null and their standard errors in bits per
pixel, exact over t, on fresh images larger than the training crops, beside
the paper's), kl_per_t_fresh.png and figure4.png (fresh images beside samples
of their size).
"""

import functools

from . import common

run = functools.partial(common.training_run, "dead_leaves", __doc__)

if __name__ == "__main__":
  common.cli(run)
