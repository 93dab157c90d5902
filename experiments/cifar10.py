"""Trains the 2015 diffusion model on CIFAR-10 (the reference README's recipe).

  python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

from experiments import launch


def run() -> None:
  launch.run(launch.config_path("cifar10"))


if __name__ == "__main__":
  run()
