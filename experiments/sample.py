"""Samples from a trained run: plain samples, or, where the experiment supports them,
inpainting, denoising and super-resolution (paper section 2.5).

  python -m experiments.sample --workdir=runs/mnist --mode=inpaint --num_images=36

Writes a picture and an .npz of the arrays (same name) in the experiment's
output units ([0, 1] pixels for images), by default
<workdir>/samples/<mode>-step<step>-seed<seed>.png. With --intermediate,
each row is one example and the columns are the states along the reverse
trajectory. A mode the run's experiment does not support is an error naming
the ones it does.
"""

import os

from absl import flags

from dpm_jax import config as config_lib
from . import launch


def define(values: flags.FlagValues, argv) -> None:
  del argv
  launch.define_run_flags(values)
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
  launch.use_cpu_devices(values, values.num_images)
  run, exp = registry.open_run(values.workdir, values.step)
  experiment.check_mode(exp, values.mode)
  cfg, n = run.config, values.num_images
  conditional = values.mode != "sample"
  dataset = registry.run_data(run, exp) if conditional else experiment.empty_dataset(exp, cfg)
  task = exp.build(cfg, dataset, run.stats)
  options, true = {}, None
  if conditional:
    if len(task.test) < n:
      raise launch.UsageError(f"--num_images={n} exceeds the run's {len(task.test)} test "
                              "examples.")
    true = task.test[np.random.default_rng(values.seed).permutation(len(task.test))[:n]]
    options = dict(mask_kind=values.mask or cfg.sample.mask,
                   denoise_sigma=values.denoise_sigma or cfg.sample.denoise_sigma,
                   superres_factor=values.superres_factor, superres_noise=values.superres_noise)
    width = cfg.model.get("spatial_width")
    if values.mode == "superres" and width and width % values.superres_factor:
      raise launch.UsageError(f"--superres_factor={values.superres_factor} does not divide the "
                              f"image width {width}.")
  record_t = (sampling.default_record_t(cfg.model.trajectory_length,
                                        values.num_intermediate or cfg.sample.num_intermediate)
              if values.intermediate else ())
  skip = cfg.sample.skip_first_step if values.skip_first_step is None else values.skip_first_step
  out = launch.run_stoppable("sampling", lambda should_stop: exp.generate(
      task, run.params, values.mode, jax.random.key(values.seed), num_images=n,
      record_t=record_t, skip_first_step=skip, true_examples=true, should_stop=should_stop,
      **options))
  path = output_path(values, run.step)
  outputs.require_finite(f"{values.mode} of step {run.step}", **out)
  exp.write_picture(out, path, run.stats)
  outputs.save_npz(os.path.splitext(path)[0] + ".npz", **out)
  print(f"{values.mode}: {n} examples from step {run.step} -> {path} (+ .npz)")


PROGRAM = launch.Program("experiments.sample", __doc__, define, main)


def run() -> None:
  PROGRAM.cli()


if __name__ == "__main__":
  run()
