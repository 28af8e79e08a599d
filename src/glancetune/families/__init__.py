"""Model families: one file per family behind one protocol (base.py), the registry (registry.py), model references
and lookups (models.py), tiny random pipelines (tiny.py).

The names of models.py are read through this package (`from glancetune.families import model_info`) but loaded on
first use: importing a submodule alone (the `tiny` command's parser, which every `--help` builds) loads no family
and so neither torch nor diffusers.
"""
from __future__ import annotations

import importlib
import importlib.util


def __getattr__(name: str):
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(name)  # a submodule: the import system loads it
    value = getattr(importlib.import_module(f"{__name__}.models"), name)
    globals()[name] = value  # looked up once: later imports of the name find it here
    return value
