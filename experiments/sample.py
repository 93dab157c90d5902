"""Samples from a trained run, or inpaints, denoises or super-resolves (paper section 2.5).

  python -m experiments.sample --workdir=runs/mnist --mode=inpaint --num_images=36

Writes a picture and its arrays (.npz, output units: [0, 1] pixels for images);
with --intermediate, one row per example, the states along the trajectory.
"""

import os

from absl import flags

from dpm_jax import config as config_lib
from dpm_jax import errors
from . import common


def define(values: flags.FlagValues, argv) -> None:
  del argv
  common.define_run_flags(values)
  flags.DEFINE_string("mode", "sample", "sample, or a conditional mode of the experiment "
                      "(images: inpaint, denoise, superres).", flag_values=values)
  flags.DEFINE_integer("num_images", 36, "Examples to draw.", lower_bound=1, flag_values=values)
  flags.DEFINE_string("output", None, "PNG path (a bare name goes into the run directory), "
                      "or a folder ending in / (default: the run's samples/, named "
                      "<mode>-step<step>-seed<seed>.png).", flag_values=values)
  flags.DEFINE_bool("intermediate", False, "Show states at several t.", flag_values=values)
  flags.DEFINE_integer("num_intermediate", None, "Intermediate columns (default: config.sample).",
                       lower_bound=1, flag_values=values)
  flags.DEFINE_enum("mask", None, list(config_lib.MASKS), "Known pixels of --mode=inpaint "
                    "(default: config.sample.mask).", flag_values=values)
  flags.DEFINE_float("denoise_sigma", None, "Observation noise of --mode=denoise, model units "
                     "(default: config.sample.denoise_sigma).", flag_values=values)
  flags.DEFINE_integer("superres_factor", 4, "Downsampling factor of --mode=superres.",
                       lower_bound=1, flag_values=values)
  flags.DEFINE_float("superres_noise", 0.1, "Observation noise of --mode=superres, model units.",
                     flag_values=values)
  flags.DEFINE_bool("skip_first_step", None, "Stop at x_0 like the reference sampler "
                    "(default: config.sample.skip_first_step).", flag_values=values)
  flags.DEFINE_list("image_size", None, "The samples' size, N or H,W pixels (a "
                    "convolution-only model).", flag_values=values)
  flags.DEFINE_string("image", None, "An image file to condition on instead of test examples.",
                      flag_values=values)
  flags.DEFINE_list("box", None, "--mode=inpaint: the region to fill, x,y,width,height "
                    "(default with --image: its central third, the paper's Figure 5).",
                    flag_values=values)
  for name, counts, what in (("image_size", (1, 2), "N or H,W"), ("box", (4,), "x,y,width,height")):
    flags.register_validator(name, lambda v, n=counts: v is None or (
        len(v) in n and all(p.strip().isdigit() for p in v)),
        message=f"--{name} takes {what} in pixels", flag_values=values)
  for name in ("denoise_sigma", "superres_noise"):
    flags.register_validator(name, lambda v: v is None or v > 0,
                             message=f"--{name} must be > 0 (the observation's noise)",
                             flag_values=values)


def output_path(values, step: int, raw: bool = False) -> str:
  """The picture's path: --output as given (a bare name into the run directory; a folder,
  one ending in '/' or existing, holds the default name), by default
  samples/<mode>-step<step>-seed<seed>[-raw][-trajectory].png in the run directory
  (-raw: the raw parameters of a run that keeps their moving average)."""
  name = (f"{values.mode}-step{step}-seed{values.seed}" + ("-raw" if raw else "")
          + ("-trajectory" if values.intermediate else "") + ".png")
  out = values.output
  if not out:
    return os.path.join(values.workdir, "samples", name)
  if out.endswith(os.sep) or os.path.isdir(out):
    return os.path.join(out, name)
  return out if os.path.dirname(out) else os.path.join(values.workdir, out)


def main(values: flags.FlagValues) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dpm_jax import execution, experiment, outputs, registry, safety, sampling  # pylint: disable=g-import-not-at-top
  common.show_cpu_devices(values)  # one per core; the images split over those dividing them
  outputs.writable_folder("the samples' folder", os.path.dirname(output_path(values, 0)),
                          "write them elsewhere with --output=FOLDER/NAME.png")
  from_test = values.mode != "sample" and not values.image
  run, task = registry.open_task(values.workdir, values.step, with_data=from_test,
                                 params=values.params)
  cfg, exp, n, test = run.config, task.experiment, values.num_images, task.data.test
  true = None
  if from_test:
    if len(test) < n:
      raise errors.UserError(f"--num_images={n} exceeds the run's {len(test)} test examples.")
    true = test[np.random.default_rng(values.seed).permutation(len(test))[:n]]
  box = tuple(map(int, values.box)) if values.box else None
  record_t = (sampling.default_record_t(cfg.model.trajectory_length,
                                        values.num_intermediate or cfg.sample.num_intermediate)
              if values.intermediate else ())
  skip = cfg.sample.skip_first_step if values.skip_first_step is None else values.skip_first_step
  with execution.matmul_precision(cfg.compute):
    out = safety.stoppable("sampling", lambda should_stop: exp.generate(
        task, run.params, values.mode, jax.random.key(values.seed), num_images=n,
        record_t=record_t, skip_first_step=skip, true_examples=true, image=values.image,
        image_size=(int(values.image_size[0]), int(values.image_size[-1])) if values.image_size
        else None,
        should_stop=should_stop, mask_kind="box" if box else values.mask or cfg.sample.mask,
        box=box, denoise_sigma=values.denoise_sigma or cfg.sample.denoise_sigma,
        superres_factor=values.superres_factor, superres_noise=values.superres_noise))
  used_ema = np.asarray(run.params_kind == "ema")
  raw = run.params_kind == "raw" and bool(cfg.train.ema_decay)
  path = experiment.write_outputs(task, dict(out, ema_params=used_ema),
                                  output_path(values, run.step, raw))
  print(f"{values.mode}: {n} examples from step {run.step} ({run.params_kind} parameters) -> "
        f"{path} (+ .npz)")


def run(argv) -> int:
  return common.run(__doc__, define, main, argv)


if __name__ == "__main__":
  common.cli(run)
