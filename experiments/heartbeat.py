"""Trains the binary heartbeat model of the paper's Table 1, then reports its bound.

  python -m experiments.heartbeat --config=experiments/configs/heartbeat.py --workdir=runs/heartbeat

Writes <workdir>/eval.json (K, its standard error, L_null, K - L_null, in
bits per sequence, on fresh sequences, exact over t), samples.png and
kl_per_t.png.
"""

import functools

from . import common

run = functools.partial(common.training_run, "heartbeat", __doc__)

if __name__ == "__main__":
  common.cli(run)
