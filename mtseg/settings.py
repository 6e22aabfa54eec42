"""Numbers a user sets, checked for type and range before anything is built.

Each rule names a setting as the user writes it (``optimizer.lr``, ``--slab-voxels``) and what
it must be; :func:`check_settings` refuses the first value that breaks its rule with one line
naming the setting, the value and the rule (a ``ValueError`` that the entry points print
without a traceback). A ``bool`` is never taken for a number, nor a string for either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What one setting must be.

    Args:
        kind: ``int`` or ``float`` (an ``int`` value is a valid ``float``).
        low: Smallest allowed value (``None``: unbounded).
        high: Largest allowed value (``None``: unbounded).
        low_open: ``low`` itself is not allowed.
        high_open: ``high`` itself is not allowed.
        optional: ``None`` is allowed (meaning the default: e.g. "all images").
        pair: The value is a list of two numbers, each following the rule.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    pair: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            what += f" {'<' if self.high_open else '<='} {self.high:g}"
        if self.pair:
            what = f"two numbers, each {what.removeprefix('a number').strip() or 'finite'}"
        return what + (" (or null)" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.pair:
            return isinstance(value, (list, tuple)) and len(value) == 2 and all(Rule(self.kind, self.low, self.high,
                                                                                      self.low_open, self.high_open).accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


POSITIVE_INT = Rule(int, low=1)
POSITIVE = Rule(float, low=0, low_open=True)
FRACTION = Rule(float, low=0, high=1)

#: The numeric settings of ``python -m mtseg.train`` (keys absent from a config, such as the cube
#: settings in patch mode, are not checked).
TRAIN_RULES: dict[str, Rule] = {
    "seed": Rule(int, low=0),
    "progress_every_seconds": Rule(float, low=0),  # 0: a line at every step
    "optimizer.lr": POSITIVE,
    "optimizer.betas": Rule(float, low=0, high=1, high_open=True, pair=True),
    "optimizer.warmup": Rule(float, low=0, high=1, high_open=True),
    "schedule.minibatches_per_task": POSITIVE_INT,
    "schedule.eval_every": POSITIVE_INT,
    "model.depth": POSITIVE_INT,
    "model.width": POSITIVE_INT,
    "model.fc_width": POSITIVE_INT,
    "model.dropout": Rule(float, low=0, high=1, high_open=True),
    "data.val_images_per_task": Rule(int, low=1, optional=True),
    "training.batch_size": POSITIVE_INT,
    "training.cube": POSITIVE_INT,
    "training.cubes_per_task": POSITIVE_INT,
    "training.queue.max_length": POSITIVE_INT,
    "training.queue.samples_per_volume": POSITIVE_INT,
    "training.queue.block": POSITIVE_INT,
    "evaluation.slab_voxels": POSITIVE_INT,
    "evaluation.pr_thresholds": Rule(int, low=2),
}

#: Settings that moved: old key -> new key. Setting the old one is refused with a message naming the new one
#: (the old keys stay in the configs as ``null``, so Hydra accepts them and this message is the one shown).
MOVED_SETTINGS: dict[str, str] = {"data.batch_size": "training.batch_size", "data.queue": "training.queue"}

#: The numeric settings of :class:`mtseg.Segmenter` and ``python -m mtseg.predict``.
PREDICT_RULES: dict[str, Rule] = {
    "slab_voxels": POSITIVE_INT,
    "max_voxels": Rule(int, low=1, optional=True),
    "min_dominance": FRACTION,
    "min_plausibility": FRACTION,
    "min_intensity_agreement": FRACTION,
    "min_foreground_percent": Rule(float, low=0, high=100),
}


def check_settings(values: dict[str, Any], rules: dict[str, Rule], spell=lambda key: key) -> None:
    """Refuse the first of ``values`` (``{key: value}``, keys of ``rules``) that breaks its rule.

    Args:
        values: The settings; keys without a rule are not checked.
        rules: :data:`TRAIN_RULES`, :data:`PREDICT_RULES` or the like.
        spell: How a key is written in the message (e.g. ``--slab-voxels`` for predict's flags).

    Raises:
        ValueError: ``<setting>=<value>: expected <rule>``.
    """
    for key, value in values.items():
        rule = rules.get(key)
        if rule is not None and not rule.accepts(value):
            raise ValueError(f"{spell(key)}={value!r}: expected {rule.describe()}")


def check_moved_settings(cfg) -> None:
    """Refuse a value at a key of :data:`MOVED_SETTINGS` (set by a user's override or config), naming the new key."""
    from omegaconf import OmegaConf

    for old, new in MOVED_SETTINGS.items():
        if OmegaConf.select(cfg, old, default=None) is not None:
            raise ValueError(f"{old} is now {new} (the training mode owns it: conf/training); set {new} instead")


def config_values(cfg, keys) -> dict[str, Any]:
    """The values of ``keys`` (dotted) present in the OmegaConf ``cfg``, as plain Python values."""
    from omegaconf import OmegaConf

    values = {}
    for key in keys:
        node = OmegaConf.select(cfg, key, default=_MISSING)
        if node is _MISSING:
            continue
        values[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return values


_MISSING = object()
