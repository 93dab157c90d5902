"""The 2-D Swiss roll of the paper's Figure 1 and Table 1 (Appendix D.1.1).

  python -m experiments.swiss_roll --config=experiments/configs/swiss_roll.py --workdir=runs/swiss_roll
"""

import ml_collections

from dpm_jax import swiss_roll
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model = swiss_roll.model_config()
  config.data = data = ml_collections.ConfigDict()
  data.source = "synthetic"
  data.dataset = "swiss_roll"
  data.num_train = 100000         # training points, drawn once with config.seed
  data.num_test = 2000            # held-out points for the periodic test bound
  # The paper trained its toy models with SFO (a quasi-Newton method optax
  # lacks); Adam takes its place.
  config.optimizer.update(name="adam", learning_rate=1e-2, min_learning_rate=5e-4)
  config.compute.cpu_devices = 1  # a tiny model: one device wastes nothing
  t = config.train
  t.batch_size = 512
  t.num_epochs = 0
  t.num_steps = 80000
  t.batches_per_epoch = 60        # the rate decays 10x per 1000 such epochs
  t.log_every_steps = 5000
  t.eval_every_steps = 20000
  t.checkpoint_every_steps = 20000
  t.sample_every_steps = 0         # the final report draws Figure 1
  config.eval.update(method="stratified", num_strata=39, num_images=2000, batch_size=1000)
  # The bound on fresh draws after training, exact over t (experiments/swiss_roll.py).
  config.final_eval = ml_collections.ConfigDict(dict(num_examples=10000, batch_size=5000, seed=1))
  return config
