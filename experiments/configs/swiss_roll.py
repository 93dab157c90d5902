"""The 2-D Swiss roll of the paper's Figure 1 and Table 1 (Appendix D.1.1).

  python -m experiments.swiss_roll --config=experiments/configs/swiss_roll.py --workdir=runs/swiss_roll
"""

from dpm_jax import config as config_lib
from dpm_jax import swiss_roll
from dpm_jax import table1


def get_config(variant: str = ""):
  config_lib.check_variant("swiss_roll", variant)
  config = swiss_roll.SWISS_ROLL.default_config()
  if variant == "tiny":
    return table1.tiny_generated(config, trajectory_length=10, n_hidden=8)
  config.data.num_test = 2000
  config.optimizer.min_learning_rate = 5e-4
  t = config.train
  t.batch_size = 512
  t.num_steps = 80000
  t.batches_per_epoch = 60        # the rate decays 10x per 1000 such epochs
  t.log_every_steps = 5000
  t.eval_every_steps = 20000
  t.checkpoint_every_steps = 20000
  config.eval.update(method="stratified", num_strata=39, num_images=2000, batch_size=1000)
  config.final_eval.update(num_examples=10000, batch_size=5000)
  return config
