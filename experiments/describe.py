"""--print_config: the resolved config, one field a line, with what each field means.

The meanings are the comments next to (or just above) the lines that set the
fields in the config sources: dpm_jax/config.py (the shared sections), the
experiment's modules (its model and data sections; Experiment.config_sources)
and the experiment's config file. A later source's comment wins.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable

import ml_collections

_SECTION_ALIAS = re.compile(r"^\s*config\.(\w+)\s*=\s*(\w+)\s*=")    # config.data = data = ...
_SECTION_VAR = re.compile(r"^\s*(\w+)\s*=\s*config\.(\w+)\s*$")        # t = config.train
_SECTION_NEW = re.compile(r"^\s*(\w+)\s*=\s*ml_collections\.ConfigDict\(\)")  # data = ...
SECTIONS = ("data", "train", "optimizer", "compute", "eval", "sample", "final_eval")
_ASSIGN = re.compile(r"^\s*(\w+(?:\.\w+)+)\s*=\s*[^=].*?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s*#\s?(.*)$")


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
      elif (m := _SECTION_NEW.match(line)) and m.group(1) in SECTIONS:
        aliases[m.group(1)] = m.group(1) + "."
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


def all_comments(config_file: str, config: ml_collections.ConfigDict) -> Dict[str, str]:
  """{"section.field": meaning} for a config: its experiment's sources, then its file."""
  from dpm_jax import registry  # pylint: disable=g-import-not-at-top
  comments = {}
  for path in registry.of_config(config).config_sources():
    comments.update(field_comments(path, model_file=True))
  if config_file and os.path.exists(config_file.partition(":")[0]):
    comments.update(field_comments(config_file.partition(":")[0]))
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
  comments = all_comments(config_file, config)
  lines = [f"# {config_file}, with the command line's overrides. Set any field with "
           "--config.<name>=<value>."]
  for name, value in _leaves(config):
    entry = f"{name} = {value!r}"
    meaning = comments.get(name)
    lines.append(f"{entry:<44}  # {meaning}" if meaning else entry)
  return "\n".join(lines)
