"""Trains the 2015 diffusion model on CIFAR-10 (the reference README's recipe).

  python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

from . import launch

PROGRAM = launch.training_program("experiments.cifar10", __doc__, "cifar10")


def run() -> None:
  PROGRAM.cli()


if __name__ == "__main__":
  run()
