"""How the code is layered: the loop below the catalogue, one place for the backend,
one user-error type, every config field's meaning beside its default."""

import ast
import inspect
import pathlib
import subprocess
import sys

import pytest

import runs
from conftest import ROOT
from dpm_jax import config as config_lib, errors, experiment, registry

LIBRARY = pathlib.Path(ROOT) / "dpm_jax"
CATALOGUE = ("dpm_jax.registry", "dpm_jax.table1", "dpm_jax.images", "dpm_jax.heartbeat",
             "dpm_jax.swiss_roll", "dpm_jax.dead_leaves", "dpm_jax.texture")


def test_the_training_loop_imports_no_experiment():
  script = ("import sys, dpm_jax.train\n"
            f"print([m for m in {CATALOGUE!r} if m in sys.modules])\n")
  res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == "[]"


def test_the_backend_is_asked_in_one_module():
  asking = sorted(p.name for p in LIBRARY.rglob("*.py") if "default_backend()" in p.read_text())
  assert asking == ["execution.py"]


def test_one_user_error_type():
  """Every exception the library defines is errors.UserError, errors.Stopped, or a private
  refinement of them that callers never need to name."""
  for path in LIBRARY.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ClassDef) and any(
          getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
          for b in node.bases):
        assert path.name == "errors.py" or node.name.startswith("_"), (path, node.name)
  assert issubclass(errors.UserError, Exception) and issubclass(errors.Stopped, Exception)


def test_the_protocol_is_small():
  methods = [n for n, v in vars(experiment.Experiment).items()
             if inspect.isfunction(v) and not n.startswith("_")]
  assert len(methods) <= 8, methods
  for exp in registry.EXPERIMENTS.values():
    assert type(exp).__mro__[1] is experiment.Experiment, type(exp).__mro__


@pytest.mark.parametrize("name", sorted(registry.EXPERIMENTS))
def test_every_field_of_every_shipped_config_has_its_own_meaning(name):
  config = runs.config(name)
  exp = registry.get(name)
  fields = [field for field, _ in config_lib.leaves(config)]
  assert not [f for f in fields if not exp.help.get(f)], name


def test_meanings_are_the_experiment_s_own():
  mnist, heartbeat, swiss = (registry.get(n).help for n in ("mnist", "heartbeat", "swiss_roll"))
  assert mnist["model.n_hidden_dense_lower"] == "units of the dense lower pathway (0: off)"
  assert mnist["model.t_sampling"].startswith("'per_minibatch': one t for the whole minibatch")
  assert heartbeat["model.n_hidden"] == "sigmoid units per hidden layer, shared over t"
  assert swiss["model.n_hidden"].startswith("radial basis functions")
  assert mnist["eval.num_strata"] == config_lib.EVAL["num_strata"].help


def test_the_estimators_defaults_are_config_eval_s():
  from dpm_jax import evaluate  # pylint: disable=g-import-not-at-top
  defaults = inspect.signature(evaluate.bound_stratified).parameters
  assert defaults["num_strata"].default == config_lib.EVAL["num_strata"].default
  assert defaults["batch_size"].default == config_lib.EVAL["batch_size"].default
  one_t = inspect.signature(evaluate.bound_one_t).parameters
  assert one_t["num_batches"].default == config_lib.EVAL["num_batches"].default


def test_no_code_cites_the_documentation():
  for folder in ("dpm_jax", "experiments"):
    for path in (pathlib.Path(ROOT) / folder).rglob("*.py"):
      text = path.read_text()
      for word in ("README", "BENCHMARKS", "docs/"):
        assert word not in text, (path, word)
