"""A texture (gravel, the paper's bark row of Table 1 and Figure 5): the convolution-only
model on crops, T = 500, evaluated exact over t on larger held-out crops and inpainted.

  python -m experiments.texture --config=experiments/configs/texture.py --workdir=runs/texture
"""

from dpm_jax import registry


def get_config(variant: str = ""):
  experiment = registry.get("texture")
  if variant:
    return experiment.variant(variant)
  config = experiment.default_config()
  config.model.t_sampling = "per_example"  # one t per example: a steadier gradient
  t = config.train
  t.num_steps = 6000
  t.batches_per_epoch = 6         # the rate decays 10x over the run (1000 such epochs)
  t.log_every_steps = 500
  t.eval_every_steps = 3000
  t.checkpoint_every_steps = 1000
  config.optimizer.update(name="adam", learning_rate=2e-3, min_learning_rate=2e-4)
  config.eval.update(method="stratified", num_strata=20, num_images=256, batch_size=64)
  return config
