"""Trains the 2015 diffusion model on CIFAR-10 (the reference README's recipe).

python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

from . import common


def run(argv) -> int:
  return common.training_run("cifar10", __doc__, argv)


if __name__ == "__main__":
  common.cli(run)
