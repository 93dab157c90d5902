"""A tiny MNIST config for tests and smoke runs on a CPU (seconds, not minutes)."""

from experiments.configs import default


def get_config():
  config = default.get_config()
  m = config.model
  m.n_hidden_dense_lower = 16
  m.n_hidden_dense_lower_output = 1
  m.n_hidden_dense_upper = 8
  m.n_hidden_conv = 4
  m.n_layers_conv = 2
  m.n_layers_dense_lower = 2
  m.n_layers_dense_upper = 2
  m.trajectory_length = 50
  m.n_temporal_basis = 4
  config.train.batch_size = 32
  config.train.num_steps = 20
  config.train.log_every_steps = 5
  config.train.eval_every_steps = 10
  config.train.checkpoint_every_steps = 10
  config.eval.batch_size = 32
  config.train.sample_every_steps = 0
  config.eval.num_batches = 3
  config.eval.num_strata = 5
  config.eval.num_images = 64
  return config
