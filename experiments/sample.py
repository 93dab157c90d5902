"""Samples from a trained run: plain samples, or, where the experiment supports them,
inpainting, denoising and super-resolution (paper section 2.5).

  python -m experiments.sample --workdir=runs/mnist --mode=inpaint --num_images=36

Writes a picture and an .npz of the arrays (same name) in the experiment's
output units ([0, 1] pixels for images), by default
<workdir>/samples/<mode>-step<step>-seed<seed>.png (...-trajectory.png with
--intermediate). With --intermediate, each row is one example and the columns
are the states along the reverse trajectory. A mode the run's experiment does
not support is an error naming the ones it does.
"""

import os

from absl import flags

from dpm_jax import config as config_lib
from dpm_jax import errors
from . import common


def define(values: flags.FlagValues, argv) -> None:
  del argv
  common.define_run_flags(values)
  flags.DEFINE_string("mode", "sample", "What to generate: sample, or one of the conditional "
                      "modes the experiment supports (images: inpaint, denoise, superres).",
                      flag_values=values)
  flags.DEFINE_integer("num_images", 36, "Examples to draw.", lower_bound=1, flag_values=values)
  flags.DEFINE_string("output", None, "PNG path; a bare file name goes into the run directory "
                      "(default: <workdir>/samples/<mode>-step<step>-seed<seed>.png).",
                      flag_values=values)
  flags.DEFINE_bool("intermediate", False, "Show states at several t as columns.",
                    flag_values=values)
  flags.DEFINE_integer("num_intermediate", None, "Intermediate columns (default: config.sample).",
                       lower_bound=1, flag_values=values)
  flags.DEFINE_enum("mask", None, list(config_lib.MASKS),
                    "Known pixels for --mode=inpaint (default: config.sample.mask).",
                    flag_values=values)
  flags.DEFINE_float("denoise_sigma", None, "Observation noise for --mode=denoise, in model "
                     "units, > 0 (default: config.sample.denoise_sigma, 1 as the reference).",
                     flag_values=values)
  flags.DEFINE_integer("superres_factor", 4, "Downsampling factor for --mode=superres; it must "
                       "divide the image width.", lower_bound=1, flag_values=values)
  flags.DEFINE_float("superres_noise", 0.1, "Observation noise for --mode=superres (model "
                     "units), > 0.", flag_values=values)
  flags.DEFINE_bool("skip_first_step", None, "Stop at x_0 like the reference sampler "
                    "(default: config.sample.skip_first_step).", flag_values=values)
  flags.DEFINE_string("image_size", None, "--mode=sample: the samples' size, N or HxW pixels, "
                      "for a convolution-only model (any size; default: the training size).",
                      flag_values=values)
  flags.DEFINE_string("image", None, "An image file to condition on instead of test examples "
                      "(--num_images copies of it): as it is for a convolution-only model, "
                      "else padded and resized as the folder source does.", flag_values=values)
  flags.DEFINE_string("box", None, "--mode=inpaint: the region to fill, x,y,width,height in "
                      "pixels (default with --image: its central third, the paper's Figure 5; "
                      "else --mask).", flag_values=values)
  for name in ("denoise_sigma", "superres_noise"):
    flags.register_validator(name, lambda v: v is None or v > 0,
                             message=f"--{name} must be > 0 (the observation's noise)",
                             flag_values=values)


def output_path(values, step: int) -> str:
  """--output as given if it has a folder, else in the run directory."""
  if not values.output:
    suffix = "-trajectory" if values.intermediate else ""
    return os.path.join(values.workdir, "samples",
                        f"{values.mode}-step{step}-seed{values.seed}{suffix}.png")
  return values.output if os.path.dirname(values.output) else os.path.join(values.workdir,
                                                                            values.output)


def main(values: flags.FlagValues) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dpm_jax import experiment, outputs, registry, sampling  # pylint: disable=g-import-not-at-top
  common.show_cpu_devices(values, values.num_images)
  run_, exp = registry.open_run(values.workdir, values.step)
  experiment.check_mode(exp, values.mode)
  cfg, n = run_.config, values.num_images
  conditional = values.mode != "sample"
  if values.image_size and conditional:
    raise errors.UserError("--image_size is for --mode=sample; a conditional mode samples at "
                           "the size of what it conditions on (--image).")
  if values.box and values.mode != "inpaint":
    raise errors.UserError("--box is for --mode=inpaint.")
  if values.image and not conditional:
    raise errors.UserError("--image is for the conditional modes (inpaint, denoise, superres).")
  from_test = conditional and not values.image
  dataset = registry.run_data(run_, exp) if from_test else experiment.empty_dataset(exp, cfg)
  task = experiment.build(exp, cfg, dataset, run_.stats)
  true = None
  if from_test:
    if len(task.data.test) < n:
      raise errors.UserError(f"--num_images={n} exceeds the run's {len(task.data.test)} test "
                             "examples.")
    true = task.data.test[np.random.default_rng(values.seed).permutation(len(task.data.test))[:n]]
  options = {}
  if conditional:
    box = parse_box(values.box) if values.box else None
    options.update(mask_kind="box" if box else values.mask or cfg.sample.mask, box=box,
                   denoise_sigma=values.denoise_sigma or cfg.sample.denoise_sigma,
                   superres_factor=values.superres_factor, superres_noise=values.superres_noise)
  record_t = (sampling.default_record_t(cfg.model.trajectory_length,
                                        values.num_intermediate or cfg.sample.num_intermediate)
              if values.intermediate else ())
  skip = cfg.sample.skip_first_step if values.skip_first_step is None else values.skip_first_step
  out = common.run_stoppable("sampling", lambda should_stop: exp.generate(
      task, run_.params, values.mode, jax.random.key(values.seed), num_images=n,
      record_t=record_t, skip_first_step=skip, true_examples=true, image=values.image,
      image_size=parse_size(values.image_size) if values.image_size else None,
      should_stop=should_stop, **options))
  path = output_path(values, run_.step)
  outputs.require_finite(f"{values.mode} of step {run_.step}", **out)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  exp.write_picture(out, path, task.units)
  outputs.save_npz(os.path.splitext(path)[0] + ".npz", **out)
  print(f"{values.mode}: {n} examples from step {run_.step} -> {path} (+ .npz)")


def parse_size(text: str) -> tuple:
  """'64' or '48x64' (height x width) -> (H, W)."""
  try:
    parts = [int(p) for p in text.lower().split("x")]
  except ValueError:
    parts = []
  if len(parts) not in (1, 2) or min(parts) < 1:
    raise errors.UserError(f"--image_size={text}: give N or HxW, positive pixel counts.")
  return (parts[0], parts[-1])


def parse_box(text: str) -> tuple:
  """'x,y,width,height' -> a tuple of four non-negative ints, width and height > 0."""
  try:
    box = tuple(int(p) for p in text.split(","))
  except ValueError:
    box = ()
  if len(box) != 4 or min(box) < 0 or min(box[2:]) < 1:
    raise errors.UserError(f"--box={text}: give x,y,width,height in pixels (width, height > 0).")
  return box


def run(argv) -> int:
  return common.run(__doc__, define, main, argv)


if __name__ == "__main__":
  common.cli(run)
