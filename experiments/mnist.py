"""Trains the 2015 diffusion model on MNIST.

  python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
"""

from experiments import launch


def run() -> None:
  launch.run(launch.config_path("mnist"))


if __name__ == "__main__":
  run()
