"""CIFAR-10 with the reference README's recipe (batch 200, the larger network).

  python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

from dpm_jax import registry


def get_config(variant: str = ""):
  experiment = registry.get("cifar10")
  if variant:
    return experiment.variant(variant)
  config = experiment.default_config()
  config.train.batch_size = 200
  config.eval.batch_size = 200
  config.train.sample_num_images = 16
  return config
