"""A tiny MNIST config for tests and smoke runs on a CPU (seconds, not minutes):
the mnist config's tiny variant, as --config=experiments/configs/mnist.py:tiny."""

from dpm_jax import config as config_lib
from dpm_jax import images


def get_config(variant: str = ""):
  config_lib.check_variant("test", variant)
  return images.tiny(images.MNIST.default_config())
