"""Facts that live in one place and are named in another, checked so they cannot drift: the config's descriptions
of model_family / model_flavour against the family registry, the glance_objective choices against the objective
registry, and every family's tiny builders and ComfyUI layout declared on the family itself."""
from __future__ import annotations

import typing

import pytest

from glancetune.config.schema import TrainConfig
from glancetune.families.registry import FAMILIES
from glancetune.families.tiny import builders
from glancetune.train.objectives import OBJECTIVES


def adapters():
    return [m for fam in FAMILIES.values() for m in getattr(fam, "members", (fam,))]


def test_config_describes_every_registered_family_and_flavour():
    family_help = TrainConfig.model_fields["model_family"].description
    flavour_help = TrainConfig.model_fields["model_flavour"].description
    missing = [name for name in FAMILIES if name not in family_help]
    assert not missing, f"model_family's description does not name {missing}"
    flavours = {f for fam in FAMILIES.values() for f in list(fam.flavours) + list(fam.flavour_families)
                if f is not None and f != "v1.0"}  # v1.0: the default's other name
    assert not [f for f in flavours if f not in flavour_help], flavour_help


def test_objective_choices_are_the_registry():
    choices = typing.get_args(TrainConfig.model_fields["glance_objective"].annotation)
    assert set(choices) == set(OBJECTIVES) | {"auto"}  # auto: resolved by the plan (plan/build.py)


@pytest.mark.parametrize("fam", adapters(), ids=lambda f: type(f).__name__)
def test_each_family_declares_its_tiny_model_and_comfyui_layout(fam):
    assert fam.tiny_builders(), "a family builds at least one tiny model"
    assert set(fam.tiny_builders()) <= set(builders())
    config = {"num_attention_heads": 2, "attention_head_dim": 4, "num_layers": 1, "num_single_layers": 1}
    table = fam.comfyui_targets(config)
    assert table is None or all(len(v) == 5 for v in table.values())


def test_configuration_reference_is_generated_from_the_schema():
    """docs/configuration.md's key tables are exactly what tools/config_reference.py renders from the schema's
    own descriptions (the one source of each key's meaning): editing one without the other fails here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    doc = ref.DOC.read_text(encoding="utf-8")
    assert ref.render(doc) == doc, "run: python tools/config_reference.py --write"
