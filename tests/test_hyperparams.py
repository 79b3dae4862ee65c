"""A trial's hyperparameters are a typed object built from the suite; the defaults live only in spec.py."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import write_suite

from harness.config import HyperParams, fixed_config, train_settings
from harness.spec import Hyperparameters, Training, load_suite
from harness.train import TrainSettings


def test_names_are_the_suite_hyperparameters():
    assert [f.name for f in dataclasses.fields(HyperParams)] == list(Hyperparameters.model_fields)


def test_values_take_each_fields_type():
    hp = HyperParams.from_values(
        {
            "learning_rate": "3e-4",  # a string choice
            "epochs": 2.0,  # YAML or a float range
            "batch_size": 4,
            "lora_rank": 0,
            "train_inputs": "16",
            "warmup_ratio": 0,
            "weight_decay": 0.01,
        }
    )
    assert hp == HyperParams(3e-4, 2, 4, 0, 16, 0.0, 0.01)
    assert type(hp.epochs) is int and type(hp.warmup_ratio) is float


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 2.5}, r"hyperparameters\.epochs: 2\.5 is not a whole number"),
        ({"learning_rate": "fast"}, r"hyperparameters\.learning_rate: 'fast' is not a number"),
        ({"momentum": 0.9}, r"hyperparameters: expected \[.*\], got \[.*'momentum'.*\]"),
    ],
)
def test_bad_values_name_the_field(change, message):
    values = {**dict(Hyperparameters()), **change}
    with pytest.raises(ValueError, match=message):
        HyperParams.from_values(values)


def test_fixed_suite_gives_its_values_and_training_block(tmp_path):
    suite = load_suite(
        write_suite(
            tmp_path,
            axes={"contexts": [{"name": "empty"}]},
            hyperparameters={"learning_rate": 0.001, "epochs": 3},
            training={"grad_accum": 2},
        )
    )
    cfg = fixed_config(suite)
    assert cfg.hp.learning_rate == 0.001 and cfg.hp.epochs == 3
    assert cfg.params()["hp.epochs"] == 3
    settings = train_settings(cfg.hp, suite.training, suite.seed)
    assert settings.learning_rate == 0.001 and settings.epochs == 3 and settings.grad_accum == 2
    # fields the suite leaves out come from the spec's defaults; train.py keeps no second copy of them
    assert settings.warmup_ratio == Hyperparameters().warmup_ratio and settings.scheduler == Training().scheduler
    assert settings.seed == suite.seed
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(TrainSettings))
