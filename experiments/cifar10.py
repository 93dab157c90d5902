"""Trains the 2015 diffusion model on CIFAR-10 (the reference README's recipe).

  python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

import os

from experiments import launch

if __name__ == "__main__":
  launch.run(os.path.join(os.path.dirname(__file__), "configs", "cifar10.py"))
