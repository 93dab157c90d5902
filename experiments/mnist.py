"""Trains the 2015 diffusion model on MNIST.

  python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
"""

import os

from experiments import launch

if __name__ == "__main__":
  launch.run(os.path.join(os.path.dirname(__file__), "configs", "mnist.py"))
