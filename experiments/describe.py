"""--print_config: the resolved config, one field a line, with what each field means.

The meanings are the comments next to (or just above) the lines that set the
fields in the config sources: experiments/configs/default.py, the experiment's
own config file, and the model configs in dpm_jax. A comment in the
experiment's file wins over the default's.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable

import ml_collections

_SECTION_ALIAS = re.compile(r"^\s*config\.(\w+)\s*=\s*(\w+)\s*=")    # config.data = data = ...
_SECTION_VAR = re.compile(r"^\s*(\w+)\s*=\s*config\.(\w+)\s*$")        # t = config.train
_ASSIGN = re.compile(r"^\s*(\w+(?:\.\w+)+)\s*=\s*[^=].*?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s*#\s?(.*)$")


def _model_sources(dataset: str) -> list:
  """The files that set the model fields of a dataset's config: the image model's
  (config.py, also the loss fields of the others), then the dataset's own."""
  import dpm_jax  # pylint: disable=g-import-not-at-top
  from dpm_jax import tasks  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(dpm_jax.__file__)
  own = os.path.join(root, f"{dataset}.py")
  return [os.path.join(root, "config.py")] + ([own] if dataset in tasks.SYNTHETIC else [])


def field_comments(path: str, model_file: bool = False) -> Dict[str, str]:
  """{"section.field": meaning} from the assignments in one source file.

  `cfg.x = ...` lines count as model fields in model files; elsewhere
  `config.<section>.<x>`, `<alias>.<x>` (alias = config.<section>) and
  `config.<x>` are understood.
  """
  aliases = {"config": ""}
  comments, pending = {}, []
  with open(path) as f:
    for line in f:
      if m := _SECTION_ALIAS.match(line):
        aliases[m.group(2)] = m.group(1) + "."
      elif m := _SECTION_VAR.match(line):
        aliases[m.group(1)] = m.group(2) + "."
      comment = _COMMENT.match(line)
      if comment:
        pending.append(comment.group(1).strip())
        continue
      assign = _ASSIGN.match(line)
      if assign:
        target, inline = assign.group(1), assign.group(2)
        head, _, field = target.rpartition(".")
        first, _, rest = head.partition(".")
        if model_file and head == "cfg":
          name = "model." + field
        elif first in aliases:
          name = aliases[first] + (rest + "." if rest else "") + field
        else:
          name = None
        text = (inline or " ".join(p for p in pending if not p.startswith("---"))).strip()
        if name and text:
          comments[name] = text
      pending = []
  return comments


def all_comments(config_file: str, dataset: str) -> Dict[str, str]:
  here = os.path.dirname(os.path.abspath(__file__))
  comments = {}
  for path in _model_sources(dataset):
    comments.update(field_comments(path, model_file=True))
  comments.update(field_comments(os.path.join(here, "configs", "default.py")))
  if config_file and os.path.exists(config_file):
    comments.update(field_comments(config_file))
  return comments


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterable:
  for key in sorted(config.keys(), key=lambda k: isinstance(config[k], ml_collections.ConfigDict)):
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def describe(config: ml_collections.ConfigDict, config_file: str) -> str:
  """The config as `name = value  # meaning` lines, sections in order."""
  comments = all_comments(config_file, config.get("data", {}).get("dataset", ""))
  lines = [f"# {config_file}, with the command line's overrides. Set any field with "
           "--config.<name>=<value>."]
  for name, value in _leaves(config):
    entry = f"{name} = {value!r}"
    meaning = comments.get(name)
    lines.append(f"{entry:<44}  # {meaning}" if meaning else entry)
  return "\n".join(lines)
