"""The binary heartbeat of the paper's Table 1 (Appendix D.1.2): binomial diffusion.

  python -m experiments.heartbeat --config=experiments/configs/heartbeat.py --workdir=runs/heartbeat
"""

import ml_collections

from dpm_jax import heartbeat
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model = heartbeat.model_config()
  config.data = data = ml_collections.ConfigDict()
  data.source = "synthetic"
  data.dataset = "heartbeat"
  data.num_train = 100000         # training sequences, drawn once with config.seed
  data.num_test = 1000            # held-out sequences for the periodic test bound
  # The paper trained its toy models with SFO (a quasi-Newton method optax
  # lacks); Adam takes its place.
  config.optimizer.update(name="adam", learning_rate=1e-2, min_learning_rate=1e-3)
  config.compute.cpu_devices = 1  # a small model: one device wastes nothing
  t = config.train
  t.batch_size = 8192             # four examples per time step and minibatch, on average
  t.num_epochs = 0
  t.num_steps = 11000
  t.batches_per_epoch = 11        # the rate decays 10x over the run (1000 such epochs)
  t.log_every_steps = 1000
  t.eval_every_steps = 5500
  t.checkpoint_every_steps = 5500
  t.sample_every_steps = 0         # the final report draws samples
  t.sample_num_images = 20
  config.eval.update(method="stratified", num_strata=100, num_images=1000, batch_size=500)
  # The bound on fresh draws after training, exact over t (experiments/heartbeat.py).
  config.final_eval = ml_collections.ConfigDict(dict(num_examples=2000, batch_size=500, seed=1))
  return config
