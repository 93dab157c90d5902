"""Trains the 2015 diffusion model on MNIST.

  python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
"""

from . import launch

PROGRAM = launch.training_program("experiments.mnist", __doc__, "mnist")


def run() -> None:
  PROGRAM.cli()


if __name__ == "__main__":
  run()
