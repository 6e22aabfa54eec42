"""Defaults that code outside a Hydra run needs, read from their one home in ``conf/``.

``python -m mtseg.predict``, :class:`mtseg.Segmenter` and a module built without a full
config read the same files that Hydra composes (``conf/predict.yaml``,
``conf/evaluation/whole_image.yaml``, ``conf/limits.yaml``), so no number is written twice.
"""

from __future__ import annotations

from functools import cache

from omegaconf import OmegaConf

from mtseg import CONFIG_DIR


@cache
def _load(relative: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / relative))


def conf_defaults(relative: str) -> dict:
    """The settings of ``conf/<relative>`` (a fresh copy), e.g. ``conf_defaults("evaluation/whole_image.yaml")``."""
    return dict(_load(relative))
