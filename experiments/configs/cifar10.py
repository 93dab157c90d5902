"""CIFAR-10 with the reference README's recipe (batch 200, larger network)."""

from dpm_jax import config as model_config
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model = model_config.get_model_config("cifar10")
  config.data.source = "tfds"
  config.data.dataset = "cifar10"
  config.train.batch_size = 200
  config.eval.batch_size = 200
  config.train.sample_num_images = 16
  return config
