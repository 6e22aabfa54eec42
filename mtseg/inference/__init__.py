"""Inference: dense whole-volume inference shared by evaluation and prediction, task recognition,
and the :class:`~mtseg.inference.segmenter.Segmenter` API (``docs/development.md`` maps every module)."""
