"""Trains the 2015 diffusion model on MNIST.

python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
"""

from . import common


def run(argv) -> int:
  return common.training_run("mnist", __doc__, argv)


if __name__ == "__main__":
  common.cli(run)
