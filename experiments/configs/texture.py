"""A texture (gravel, the paper's bark row of Table 1 and Figure 5): the convolution-only
model on crops, T = 500, evaluated exact over t on larger held-out crops and inpainted.

  python -m experiments.texture --config=experiments/configs/texture.py --workdir=runs/texture
"""

from dpm_jax import registry


def get_config(variant: str = ""):
  experiment = registry.get("texture")
  if variant:
    return experiment.variant(variant)
  # The recipe (dpm_jax.images.ConvolutionalImageExperiment.recipe_config) is the
  # texture's and dead leaves' both: Adam from 2e-3 decayed 10x over 6000 steps of
  # 64 crops, one t per example, the stratified bound every 3000 steps.
  return experiment.recipe_config()
