"""Every registry reads its names, labels and defaults from the catalog (bench/config/catalog.py), and the
config stage checks method parameters the way the methods themselves take them."""
from __future__ import annotations

import dataclasses
import math

import pytest

from bench.config import catalog
from bench.config.method_params import coerce_param, resolve_method_params
from bench.config.names import UsageError
from bench.data import DATASETS
from bench.evaluation.attacks import EVAL_ATTACKS
from bench.models import MODELS
from bench.attacks.training import TRAIN_ATTACKS
from methods import METHODS


def test_registries_and_catalog_name_the_same_things():
    assert set(DATASETS) == set(catalog.DATASETS)
    assert set(MODELS) == set(catalog.MODELS)
    assert set(TRAIN_ATTACKS) == set(catalog.TRAIN_ATTACKS)
    assert set(EVAL_ATTACKS) == set(catalog.EVAL_ATTACKS)
    assert set(METHODS) == set(catalog.METHODS) | set(catalog.METHOD_ALIASES)


@pytest.mark.parametrize("name", sorted(catalog.METHODS))
def test_method_params_are_the_catalog_defaults(name):
    cls = METHODS[name]
    assert cls.name == name and cls.entry() is catalog.METHODS[name]
    assert cls.summary and cls.summary == catalog.METHODS[name].summary  # `bench ls` reads it torch-free
    fields = {f.name: f.default for f in dataclasses.fields(cls.Params)}
    assert fields == catalog.method_defaults(name)
    assert dataclasses.asdict(cls.make().params) == resolve_method_params(name)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_registry_reads_the_catalog(name):
    entry = catalog.DATASETS[name]
    assert {f.name: getattr(DATASETS[name], f.name) for f in dataclasses.fields(entry)} == dataclasses.asdict(entry)


def test_attack_registries_read_the_catalog():
    for name, info in TRAIN_ATTACKS.items():
        assert info.entry is catalog.TRAIN_ATTACKS[name] and info.has_kappa == catalog.TRAIN_ATTACKS[name].has_kappa
    for name, info in EVAL_ATTACKS.items():
        assert info.entry is catalog.EVAL_ATTACKS[name] and info.strength == catalog.EVAL_ATTACKS[name].strength


def test_labels_and_orders():
    assert catalog.row_label("gairat", "pgd") == "GAIRAT (PGD)"
    assert catalog.row_label("lrat", "saa+cw") == "LRAT (SAA+CW)"
    assert catalog.row_label("focal", "pgd") == "FOCAL (PGD)"  # outside the catalog (a plugin): its name
    assert catalog.eval_attack_order()[0] == "natural" and catalog.eval_attack_order()[-1] == "worst"
    assert catalog.method_order()[:4] == ["at", "trades", "mart", "gairat"]  # AT, the defences beside it, IRAT


def test_defaults_per_dataset_and_model():
    assert catalog.default_eps("cifar10") == 8 / 255 and catalog.default_eps("fashion-mnist") == 0.1
    assert catalog.default_eps("svhn", "l2") == 0.5 and catalog.default_eps("mnist", "l2") == 1.5
    with pytest.raises(UsageError, match="threat model"):
        catalog.default_eps("cifar10", "l1")
    assert catalog.default_model("fashion-mnist") == "cnn-bn" and catalog.default_model("cifar10") == "resnet18"
    assert catalog.default_lr("small-cnn") == 0.05 and catalog.default_lr("resnet18") == 0.1


@pytest.mark.parametrize("value,error", [
    ("nan", "finite"), (math.inf, "finite"), ([1.0], "must be a float"), ("x", "is not a float"), (True, "float"),
])
def test_bad_number_parameters_are_refused(value, error):
    with pytest.raises(UsageError, match=error):
        resolve_method_params("mail", {"slope": value})


def test_parameter_ranges_choices_and_infinity():
    with pytest.raises(UsageError, match=r"lie in \[0.0, 1.0\]"):
        resolve_method_params("gairat", {"burn_in": 1.5})
    with pytest.raises(UsageError, match="natural, pgd, saa"):
        resolve_method_params("lrat", {"anchor": "pdg"})
    assert resolve_method_params("gairat", {"lam": "inf"})["lam"] == math.inf  # lam = +inf is plain AT
    assert resolve_method_params("lrat", {"C": 1})["C"] == 1.0  # a TOML integer where a float belongs
    assert coerce_param("x.flag", "yes", catalog.Param(False, "test")) is True
