"""Samples, inpaints, denoises or super-resolves with a trained run.

  python -m experiments.sample --workdir=runs/mnist --mode=sample --num_images=36 --output=samples.png

Writes the PNG grid and an .npz of the arrays (same name, .npz) in [0, 1]
pixel units. With --intermediate, each row is one image and the columns are
the states along the reverse trajectory.
"""

import os

from absl import app
from absl import flags

from experiments import launch

flags.DEFINE_string("workdir", None, "Run directory made by the training entry point.", required=True)
flags.DEFINE_enum("mode", "sample", ["sample", "inpaint", "denoise", "superres"], "What to generate.")
flags.DEFINE_integer("num_images", 36, "Images in the grid.", lower_bound=1)
flags.DEFINE_string("output", None, "PNG path; a bare file name goes into the run directory "
                    "(default: <workdir>/samples/<mode>.png).")
flags.DEFINE_bool("intermediate", False, "Show states at several t as columns.")
flags.DEFINE_integer("num_intermediate", None, "Intermediate columns (default: config.sample).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
flags.DEFINE_enum("mask", None, ["right_half", "left_half", "centre_square", "random_pixels"],
                  "Known pixels for --mode=inpaint (default: config.sample.mask).")
flags.DEFINE_float("denoise_sigma", None, "Observation noise for --mode=denoise, in model "
                   "units (default: config.sample.denoise_sigma, 1 as the reference).",
                   lower_bound=0.0)
flags.DEFINE_integer("superres_factor", 4, "Downsampling factor for --mode=superres.",
                     lower_bound=1)
flags.DEFINE_float("superres_noise", 0.1, "Observation noise for --mode=superres (model units).",
                   lower_bound=0.0)
flags.DEFINE_bool("skip_first_step", None, "Stop at x_0 like the reference sampler "
                  "(default: config.sample.skip_first_step).")
launch.define_cpu_devices_flag()
FLAGS = flags.FLAGS


def output_path(output, workdir: str, mode: str) -> str:
  """--output as given if it has a folder, else in the run directory."""
  if not output:
    return os.path.join(workdir, "samples", f"{mode}.png")
  return output if os.path.dirname(output) else os.path.join(workdir, output)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dpm_jax import data, plotting, sampling  # pylint: disable=g-import-not-at-top
  launch.use_cpu_devices(FLAGS.num_images)
  run, task = launch.open_run(FLAGS.workdir, FLAGS.step, with_data=FLAGS.mode != "sample")
  cfg = run.config
  n = FLAGS.num_images
  true = None
  if FLAGS.mode != "sample":
    test = task.test
    if len(test) < n:
      raise app.UsageError(f"--num_images={n} exceeds the {len(test)} test images.")
    true = test[np.random.default_rng(FLAGS.seed).permutation(len(test))[:n]]
  record_t = (sampling.default_record_t(cfg.model.trajectory_length,
                                        FLAGS.num_intermediate or cfg.sample.num_intermediate)
              if FLAGS.intermediate else ())
  skip = cfg.sample.skip_first_step if FLAGS.skip_first_step is None else FLAGS.skip_first_step
  out = sampling.generate(
      task.model, run.params, data.DataStats.from_dict(run.stats), FLAGS.mode, jax.random.key(FLAGS.seed), num_images=n,
      true_images=true, mask_kind=FLAGS.mask or cfg.sample.mask,
      denoise_sigma=FLAGS.denoise_sigma if FLAGS.denoise_sigma is not None else cfg.sample.denoise_sigma,
      superres_factor=FLAGS.superres_factor, superres_noise=FLAGS.superres_noise,
      record_t=record_t, skip_first_step=skip)
  path = output_path(FLAGS.output, FLAGS.workdir, FLAGS.mode)
  columns, labels = [], []
  if FLAGS.mode != "sample":
    columns += [out["true"], out["observed"]]
    labels += ["original", "observed"]
  if record_t:
    columns += list(out["states"])
    labels += [sampling.label_of_t(t) for t in record_t]
  elif FLAGS.mode != "sample":
    columns.append(out["samples"])
    labels.append(FLAGS.mode)
  if columns:
    plotting.save_trajectory_grid(np.stack(columns), labels, path)
  else:
    plotting.save_image_grid(out["samples"], path)
  np.savez_compressed(os.path.splitext(path)[0] + ".npz",
                      **{k: np.asarray(v) for k, v in out.items()})
  print(f"{FLAGS.mode}: {n} images from step {run.step} -> {path} (+ .npz)")


def run() -> None:
  launch.app_run(main)


if __name__ == "__main__":
  run()
