"""Test-wide set-up: the experiment configs that ``python -m mtseg.train`` registers before composing."""

import pytest

from mtseg.training.experiment_configs import register_experiment_configs


@pytest.fixture(autouse=True, scope="session")
def experiment_configs():
    """``+experiment=<name>`` in the tests' own Hydra compositions (mtseg/training/experiment_configs.py)."""
    register_experiment_configs()
