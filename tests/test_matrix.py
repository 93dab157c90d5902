"""Every registered experiment through every entry point: registering one puts it here.

For each experiment of dpm_jax.registry, with its config's tiny variant, in
this process: train two steps through `dpm-jax train`, resume to a third
through `python -m experiments.<name>`'s program (bit for bit the
uninterrupted run), sample in every mode it declares (any other: one line
naming them, exit 2), evaluate with every method, print its config; the
Table 1 experiments' final report is not overwritten by an evaluation.
Every JSON and .npz written holds finite numbers or null.
"""

import contextlib
import importlib
import io
import json
import math
import os

import jax
import numpy as np
import pytest

import runs
from dpm_jax import registry, rundir, sampling
from experiments import cli, evaluate as evaluate_program, common

pytestmark = pytest.mark.slow

NAMES = tuple(registry.EXPERIMENTS)
# Each registered experiment's tiny config, and the image model on a folder of PNGs
# that a test makes (data.source='folder'): (case, experiment, its config's overrides).
DAMAGED = 3
CASES = [(name, name, {}) for name in NAMES] + [("mnist-folder", "mnist", {
    "data.source": "folder", "data.folder_mode": "resize"})]
ALL_MODES = sorted({m for e in registry.EXPERIMENTS.values() for m in e.sampling_modes}
                   | set(sampling.MODES) | {"bogus"})


def data_context(name):
  """Offline data for an experiment whose config reads tfds: its mock data."""
  if runs.config(name, 'tiny').data.source == "tfds":
    tfds = pytest.importorskip("tensorflow_datasets")
    return tfds.testing.mock_data(num_examples=64)
  return contextlib.nullcontext()


def call(fn, argv):
  """(exit code, stdout, stderr) of an entry point run in this process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = fn(argv)
  return code, out.getvalue(), err.getvalue()


def strict_json(path):
  """JSON that holds no NaN or Infinity (a strict parser refuses them)."""
  def refuse(token):
    raise AssertionError(f"{path} holds {token}")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def image_folder(folder):
  """200 PNGs of every size and colour (digits padded and tinted) and DAMAGED damaged ones."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from dpm_jax import data  # pylint: disable=g-import-not-at-top
  digits = data.load_embedded().train[:200, :, :, 0]
  rng = np.random.default_rng(0)
  for i, digit in enumerate(digits):
    h, w = rng.integers(20, 60, 2)
    image = np.asarray(Image.fromarray(digit).resize((int(w), int(h))))
    if i % 2:  # colour
      image = np.stack([image, image // 2, 255 - image], axis=-1)
    sub = folder / f"part{i % 4}"
    sub.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(sub / f"{i:03d}.png")
  for i in range(DAMAGED):
    raw = (folder / "part0" / f"{4 * i:03d}.png").read_bytes()
    (folder / "part0" / f"damaged{i}.png").write_bytes(raw[:40] + bytes(20) + raw[60:])
  return folder


def train_args(case, workdir, steps):
  return ([f"--config={case.experiment}:tiny", f"--config.train.num_steps={steps}",
           "--config.train.log_every_steps=1", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in case.overrides.items()])


class Case:
  def __init__(self, case_id, experiment, overrides):
    self.id, self.experiment, self.overrides = case_id, experiment, dict(overrides)

  def config(self):
    config = runs.config(self.experiment, 'tiny')
    for path, value in self.overrides.items():
      section, field = path.split(".")
      config[section][field] = value
    return config


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def trained(request, tmp_path_factory):
  """(case, workdir): two steps through dpm-jax, resumed to a third by its own program."""
  case = Case(*request.param)
  if case.overrides.get("data.source") == "folder":
    case.overrides["data.dir"] = str(image_folder(tmp_path_factory.mktemp("images")))
  name = case.experiment
  workdir = tmp_path_factory.mktemp(case.id)
  with data_context(name):
    code, _, err = call(cli.main, ["train", name] + train_args(case, workdir, 2))
    assert code == 0, err
    assert rundir.load_run(str(workdir)).step == 2
    program = importlib.import_module(f"experiments.{name}").run  # python -m experiments.<name>
    code, _, err = call(program, [f"experiments.{name}"] + train_args(case, workdir, 3))
    assert code == 0, err
    yield case, workdir


def test_every_experiment_has_a_config_and_an_entry_point():
  for name in NAMES:
    assert os.path.isfile(os.path.join(common.CONFIG_DIR, f"{name}.py")), name
    assert os.path.isfile(os.path.join(os.path.dirname(common.CONFIG_DIR), f"{name}.py")), name


def test_resume_equals_the_uninterrupted_run(trained, tmp_path):
  case, workdir = trained
  name = case.experiment
  config = case.config()
  config.train.update(num_steps=3, log_every_steps=1)
  with data_context(name):
    state = runs.train(config, str(tmp_path))
  resumed = rundir.load_run(str(workdir))
  assert resumed.step == 3
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  # The training metrics too (the 2-step run also evaluated at its last step, 2).
  strip = lambda records: [{k: v for k, v in r.items() if k.startswith("train/")}
                           for r in records]
  from dpm_jax import metrics  # pylint: disable=g-import-not-at-top
  assert strip(metrics.read_metrics(str(workdir))) == strip(metrics.read_metrics(str(tmp_path)))
  for path in ("metrics.jsonl",):
    with open(workdir / path) as f:
      for line in f:
        json.loads(line, parse_constant=lambda token: pytest.fail(f"{path} holds {token}"))
  for path in ("config.json", "data_stats.json"):
    strict_json(workdir / path)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_sampling_in_every_mode(trained, mode):
  case, workdir = trained
  name = case.experiment
  experiment = registry.get(name)
  argv = ["sample", f"--workdir={workdir}", f"--mode={mode}", "--num_images=4", "--seed=1"]
  with data_context(name):
    code, out, err = call(cli.main, argv)
  if mode not in experiment.sampling_modes:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(m in err for m in experiment.sampling_modes) and repr(mode) in err
    return
  assert code == 0, err
  png = workdir / "samples" / f"{mode}-step3-seed1.png"
  assert png.stat().st_size > 200 and f"-> {png}" in out
  with np.load(png.with_suffix(".npz")) as arrays:
    shape = (4,) + tuple(experiment.make_model(case.config()).data_shape)
    assert arrays["samples"].shape == shape
    for key in arrays.files:
      assert np.all(np.isfinite(arrays[key])), key


@pytest.mark.parametrize("method", ["stratified", "all_t", "one_t"])
def test_evaluation_with_every_method(trained, method):
  case, workdir = trained
  name = case.experiment
  final = workdir / "eval.json"
  before = final.read_bytes() if final.exists() else None
  # The training evaluator's batch and strata: its programs, shared.
  argv = [f"--workdir={workdir}", f"--method={method}", "--num_images=32", "--batch_size=32",
          "--num_batches=2"]
  if method == "all_t":
    argv += ["--parzen_samples=4", "--parzen_validation=16"]  # the sample mode's program
  with data_context(name):
    code, out, err = call(evaluate_program.run, ["experiments.evaluate"] + argv)
  assert code == 0, err
  report = strict_json(workdir / f"eval_{method}_test.json")
  assert report["method"] == method and report["step"] == 3 and report["experiment"] == name
  assert math.isfinite(report["K_bits"]) and report["source"] == "test"
  assert report["K_bits"] == pytest.approx(report["L_null_bits"] + report["K_minus_L_null_bits"])
  assert f"bits/{registry.get(name).unit}" in out
  if method == "all_t":
    assert (workdir / "kl_per_t_test.png").exists()
    strict_json(workdir / "eval_parzen_test.json")
  # The final report of a Table 1 experiment (fresh data) stays as training wrote it.
  assert (registry.get(name).report_source is not None) == (before is not None)
  if before is not None:
    assert final.read_bytes() == before
    assert strict_json(final)["source"] == registry.get(name).report_source


def test_the_final_report_of_a_table_1_experiment(trained):
  case, workdir = trained
  experiment = registry.get(case.experiment)
  if experiment.report_source is None:
    assert not (workdir / "eval.json").exists()
    return
  report = strict_json(workdir / "eval.json")
  config = case.config()
  assert report["step"] == 3 and report["method"] == "all_t" and report["unit"] == experiment.unit
  assert report["num_images"] == config.final_eval.num_examples
  assert report["paper"] == dict(experiment.paper)
  for key in ("K_bits", "K_bits_stderr", "L_null_bits", "K_minus_L_null_bits"):
    assert math.isfinite(report[key]), key
  assert report["K_bits"] == pytest.approx(report["L_null_bits"] + report["K_minus_L_null_bits"])
  true_ll = report.get("true_log_likelihood_bits")  # null where the data have no density
  assert true_ll is None or report["K_bits"] <= true_ll + 5 * report["K_bits_stderr"]
  assert "kl_per_t_fresh.png" in report["figures"] and len(report["figures"]) >= 2
  for path in report["figures"]:
    assert (workdir / path).stat().st_size > 1000, path


def test_print_config_gives_every_field_its_meaning(trained):
  name = trained[0].experiment
  program = importlib.import_module(f"experiments.{name}").run
  code, out, err = call(program, [f"experiments.{name}", f"--config={name}",
                                      "--print_config"])
  assert code == 0, err
  lines = [l for l in out.splitlines() if not l.startswith("#")]
  assert any(l.startswith(f"experiment = '{name}'") for l in lines)
  # Every field, its own meaning (kept beside its default, not parsed from comments).
  assert all("  # " in l for l in lines), [l for l in lines if "  # " not in l]


def test_evaluate_through_dpm_jax(trained):
  case, workdir = trained
  name = case.experiment
  with data_context(name):
    code, out, err = call(cli.main, ["evaluate", f"--workdir={workdir}", "--num_images=32",
                                     "--batch_size=32"])
  assert code == 0, err
  assert "wrote" in out and (workdir / "eval_stratified_test.json").exists()


def test_damaged_files_are_counted_not_fatal(trained):
  case, workdir = trained
  recorded = strict_json(workdir / "data_stats.json")["data"]
  if case.overrides.get("data.source") != "folder":
    assert recorded.get("damaged_files", 0) == 0
    return
  assert recorded["source"] == "folder" and recorded["damaged_files"] == DAMAGED
  assert recorded["num_files"] == 200 and len(recorded["damaged"]) == DAMAGED
  assert recorded["num_train"] + recorded["num_test"] == 200  # 90/10, resized
