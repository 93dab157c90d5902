"""Dead leaves of the paper's Table 1 and Figure 4: the convolution-only model on crops of
fresh draws, evaluated exact over t on larger fresh images.

  python -m experiments.dead_leaves --config=experiments/configs/dead_leaves.py --workdir=runs/dead_leaves
"""

from dpm_jax import registry


def get_config(variant: str = ""):
  experiment = registry.get("dead_leaves")
  if variant:
    return experiment.variant(variant)
  # The recipe (dpm_jax.images.ConvolutionalImageExperiment.recipe_config) is the
  # texture's and dead leaves' both: Adam from 2e-3 decayed 10x over 6000 steps of
  # 64 crops, one t per example, the stratified bound every 3000 steps.
  return experiment.recipe_config()
