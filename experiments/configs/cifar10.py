"""CIFAR-10 with the reference code's recipe (batch 200, the larger network).

  python -m experiments.cifar10 --config=experiments/configs/cifar10.py --workdir=runs/cifar10
"""

from dpm_jax import config as config_lib
from dpm_jax import images


def get_config(variant: str = ""):
  config_lib.check_variant("cifar10", variant)
  config = images.CIFAR10.default_config()
  if variant == "tiny":
    return images.tiny(config)
  config.model.update(n_hidden_dense_lower=1000, n_hidden_dense_lower_output=5,
                      n_hidden_conv=100, n_layers_conv=6, n_layers_dense_lower=6,
                      n_layers_dense_upper=4, n_hidden_dense_upper=100)
  config.train.update(batch_size=200, sample_num_images=16)
  config.eval.batch_size = 200
  return config
