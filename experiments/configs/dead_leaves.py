"""Dead leaves of the paper's Table 1 and Figure 4: the convolution-only model on crops of
fresh draws, evaluated exact over t on larger fresh images.

  python -m experiments.dead_leaves --config=experiments/configs/dead_leaves.py --workdir=runs/dead_leaves
"""

from dpm_jax import config as config_lib
from dpm_jax import images
from dpm_jax import dead_leaves


def get_config(variant: str = ""):
  config_lib.check_variant("dead_leaves", variant)
  config = dead_leaves.DEAD_LEAVES.default_config()
  if variant == "tiny":
    config.data.update(draw_size=32, r_max=8.0, num_test=32, examples_per_epoch=640)
    return images.tiny(config)
  # Trained to finish within 30 minutes on a 2-core CPU, the bound still improving at its
  # end: Adam from 2e-3 decayed 10x over 6000 steps of 64 crops, one t per example.
  config.model.update(n_hidden_conv=24, n_hidden_dense_upper=32, t_sampling="per_example")
  config.train.update(batch_size=64, num_steps=6000, batches_per_epoch=6, log_every_steps=500,
                      eval_every_steps=3000, checkpoint_every_steps=1000)
  config.optimizer.update(name="adam", learning_rate=2e-3, min_learning_rate=2e-4)
  config.eval.update(method="stratified", num_strata=20, num_images=256, batch_size=64)
  return config
