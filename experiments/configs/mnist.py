"""MNIST with the reference model and recipe (batch 512, lr 1e-3).

  python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
  --config=experiments/configs/mnist.py:tiny   a seconds-long smoke run

Defaults to the 5000 digits shipped with the package (offline); for full
MNIST use --config.data.source=tfds (or =idx with --config.data.dir).
"""

from dpm_jax import config as config_lib
from dpm_jax import images


def get_config(variant: str = ""):
  config_lib.check_variant("mnist", variant)
  config = images.MNIST.default_config()  # the reference recipe is the shared default
  return images.tiny(config) if variant == "tiny" else config
