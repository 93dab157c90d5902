"""A tiny MNIST config for tests and smoke runs on a CPU (seconds, not minutes):
the mnist experiment's tiny variant, as --config=experiments/configs/mnist.py:tiny."""

from dpm_jax import registry


def get_config(variant: str = ""):
  experiment = registry.get("mnist")
  return experiment.variant(variant) if variant else experiment.tiny_config()
