"""MNIST with the reference model and recipe (batch 512, lr 1e-3).

  python -m experiments.mnist --config=experiments/configs/mnist.py --workdir=runs/mnist
  --config=experiments/configs/mnist.py:tiny   a seconds-long smoke run

Defaults to the 5000 digits shipped with the package (offline); for full
MNIST use --config.data.source=tfds (or =idx with --config.data.dir).
"""

from dpm_jax import registry


def get_config(variant: str = ""):
  experiment = registry.get("mnist")
  if variant:
    return experiment.variant(variant)
  return experiment.default_config()  # the reference recipe is the shared default
