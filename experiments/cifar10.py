"""Trains the 2015 diffusion model on CIFAR-10 (the reference code's recipe).

python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

import functools

from . import common

run = functools.partial(common.training_run, "cifar10", __doc__)

if __name__ == "__main__":
  common.cli(run)
