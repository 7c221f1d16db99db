"""The config a workdir was trained with: ``--config=configs/saved.py:<workdir>``.

``main.py`` uses it when only ``--workdir`` is given (eval and resume need no
repeated command). The values are those of ``<workdir>/config.json``; the
types come from ``configs/default.py`` (tuples stay tuples, keys that may be
None keep their type), so ``--config.KEY=VALUE`` overrides are parsed and
checked as for any other config file.
"""

import json
import os

import ml_collections

from configs import default


def _plain(value):
  return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def overlay(config: ml_collections.ConfigDict, values) -> ml_collections.ConfigDict:
  """``config`` with every entry of the JSON mapping ``values`` set (new keys added)."""
  for key, value in values.items():
    if isinstance(value, dict):
      if key not in config or not isinstance(config[key], ml_collections.ConfigDict):
        config[key] = ml_collections.ConfigDict()
      overlay(config[key], value)
    elif key in config:
      try:
        config[key] = _plain(value)
      except TypeError:  # another type than the template's: the saved value wins
        del config[key]
        config[key] = _plain(value)
    else:
      config[key] = _plain(value)
  return config


def get_config(workdir=None):
  if not workdir:
    raise ValueError("configs/saved.py needs a workdir: --config=configs/saved.py:<workdir>")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist (not a training workdir?)")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  config = overlay(default.get_config(), saved)
  # A permission for one command, not a property of the run.
  config.allow_config_change = False
  return config
