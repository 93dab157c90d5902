"""The binary heartbeat of the paper's Table 1 (Appendix D.1.2): binomial diffusion.

  python -m experiments.heartbeat --config=experiments/configs/heartbeat.py --workdir=runs/heartbeat
"""

from dpm_jax import config as config_lib
from dpm_jax import heartbeat
from dpm_jax import table1


def get_config(variant: str = ""):
  config_lib.check_variant("heartbeat", variant)
  config = heartbeat.HEARTBEAT.default_config()
  if variant == "tiny":
    return table1.tiny_generated(config, trajectory_length=20, n_hidden=8,
                                 t_sampling="stratified")
  # Four examples of every t per step (diffusion.stratified_t), read out in blocks.
  config.model.t_sampling = "stratified"
  config.optimizer.min_learning_rate = 1e-3
  t = config.train
  t.batch_size = 4 * 1999         # four examples per time step t = 1 .. T-1 and minibatch
  t.num_steps = 16000
  t.batches_per_epoch = 16        # the rate decays 10x over the run (1000 such epochs)
  t.log_every_steps = 1000
  t.eval_every_steps = 8000
  t.checkpoint_every_steps = 8000
  t.sample_num_images = 20
  config.eval.update(method="stratified", num_strata=100, num_images=1000, batch_size=500)
  return config
