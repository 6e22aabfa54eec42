"""Tiny mtseg checkpoints written without training, with a controllable output bias."""

import torch

from mtseg.training.module import CHECKPOINT_KEY, MultiTaskSegmentationModule

MRI = {"spacing": 1.0, "threshold": 0.0, "intensity": [
    {"_target_": "torchio.RescaleIntensity", "out_min_max": [0.0, 1.0], "percentiles": [0.5, 99.5]}]}
CT = {"spacing": 0.9, "threshold": -1024.0, "intensity": [
    {"_target_": "torchio.Clamp", "out_min": -1024, "out_max": 3071},
    {"_target_": "torchio.RescaleIntensity", "out_min_max": [0.0, 4.095], "in_min_max": [-1024, 3071]}]}
PREPROCESSING = {"brain": MRI, "breast": {**MRI, "spacing": 1.3}, "cta": CT}


def write_checkpoint(path, tasks, bias=None, weight_scale=1.0, thresholds=None, seed=0, negative_range=None):
    """A depth-3 network whose last layer's weights are scaled by ``weight_scale`` and whose
    bias is ``bias`` ({output channel: value}, 0 elsewhere); eval-mode outputs are then
    dominated by the channels given a large bias. ``negative_range``: the training statistic
    of predict's intensity agreement ({task: (smallest, largest) share of intensities clearly below 0});
    without it the checkpoint lacks the entry, as those written before it existed do."""
    torch.manual_seed(seed)
    module = MultiTaskSegmentationModule(
        list(tasks), model={"depth": 3, "width": 4, "fc_width": 8},
        preprocessing={t: PREPROCESSING[t] for t in tasks}, pad_value=0.0,
    )
    last = module.net.head[-1]
    with torch.no_grad():
        last.weight.mul_(weight_scale)
        last.bias.zero_()
        for channel, value in (bias or {}).items():
            last.bias[channel] = value
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0}
    module.negative_fraction_range = {t: list(r) for t, r in (negative_range or {}).items()}
    module.on_save_checkpoint(checkpoint)
    if negative_range is None:
        del checkpoint[CHECKPOINT_KEY]["negative_fraction_range"]
    checkpoint[CHECKPOINT_KEY]["thresholds"] = dict(thresholds or {})
    torch.save(checkpoint, path)
    return path
