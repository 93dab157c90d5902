"""Trains the 2-D Swiss roll model of the paper's Figure 1 and Table 1, then reports its bound.

  python -m experiments.swiss_roll --config=experiments/configs/swiss_roll.py --workdir=runs/swiss_roll

Writes <workdir>/eval.json (K, its standard error, L_null, K - L_null, in
bits per point, on fresh points, exact over t), figure1.png (the forward and
reverse trajectories and the drift) and kl_per_t.png.
"""

import functools

from . import common

run = functools.partial(common.training_run, "swiss_roll", __doc__)

if __name__ == "__main__":
  common.cli(run)
