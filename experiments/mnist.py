"""Trains the 2015 diffusion model on MNIST.

python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
"""

import functools

from . import common

run = functools.partial(common.training_run, "mnist", __doc__)

if __name__ == "__main__":
  common.cli(run)
