"""MNIST with the reference model and recipe (batch 512, lr 1e-3).

Defaults to the 5000 digits shipped with the package (offline); for full
MNIST use --config.data.source=tfds (or =idx with --config.data.dir).
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "mnist"
  return config
