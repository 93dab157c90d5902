"""The Colab notebook runs top to bottom on a CPU in its tiny mode."""

import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from dpm_jax import metrics, rundir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")


def test_notebook_is_valid_and_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, cell.source[:80]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])  # a Colab v5e-1, a Kaggle v5e-8
def test_notebook_runs_in_tiny_mode(tmp_path, monkeypatch, devices):
  # A 'python3' kernel spec that runs this interpreter, found before any other.
  spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  workdir = tmp_path / "run"
  monkeypatch.setenv("DPM_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("DPM_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags + [
      f"--xla_force_host_platform_device_count={devices}"]))

  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                   resources={"metadata": {"path": ROOT}})
  client.execute()  # raises CellExecutionError on the first failing cell

  run = rundir.load_run(str(workdir))
  assert run.step == run.config.train.num_steps == 6
  records = metrics.read_metrics(str(workdir))
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
  assert [r["step"] for r in records if "eval/loss" in r] == [3, 6]
  # Each plotting cell drew its figure: the learning curve, the samples, the
  # reverse trajectory and the inpainting, in that order, and printed the bound.
  cells = [c for c in nb.cells if c.cell_type == "code"]
  figures = [sum("image/png" in o.get("data", {}) for o in c.get("outputs", [])) for c in cells]
  assert figures[-3:] == [1, 2, 1], figures
  printed = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
  assert "step 6: test bound" in printed and "trained to step 6" in printed
  assert f"batch 32 split over {devices} CPU device(s), {32 // devices} each" in printed
  with open(NOTEBOOK) as f:
    text = f.read()
  assert "v2-8" not in text and "tfds" not in text  # a retired runtime; TensorFlow's data
