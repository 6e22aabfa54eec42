"""Loading a checkpoint never runs code: pickled objects are refused with a clear error."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from checkpoints import write_checkpoint
from mtseg.checkpoint import load_checkpoint
from mtseg.predict import main


class Payload:
    """Writes a marker file when unpickled (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path / "net.ckpt", ["brain"])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["mtseg"]["extra"] = Payload(tmp_path / "payload-ran")  # inside an otherwise valid checkpoint
    torch.save(checkpoint, path)
    return path, tmp_path / "payload-ran"


def test_a_valid_checkpoint_loads_with_weights_only(tmp_path):
    loaded = load_checkpoint(write_checkpoint(tmp_path / "net.ckpt", ["brain", "cta"]))
    assert loaded.label_space.tasks == ("brain", "cta") or list(loaded.label_space.tasks) == ["brain", "cta"]


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(malicious_checkpoint):
    path, marker = malicious_checkpoint
    with pytest.raises(ValueError, match="refused: it holds Python objects"):
        load_checkpoint(path)
    assert not marker.exists()


def test_predict_exits_non_zero_on_a_checkpoint_carrying_code(malicious_checkpoint, tmp_path, capsys):
    path, marker = malicious_checkpoint
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32), np.eye(4)), image)
    assert main(["--checkpoint", str(path), "--input", str(image), "--output", str(tmp_path / "seg.nii.gz")]) != 0
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "seg.nii.gz").exists()


def test_a_checkpoint_of_the_previous_layout_still_loads(tmp_path):
    """Earlier checkpoints held each task's preprocessing and the data config in their mtseg entry too."""
    path = write_checkpoint(tmp_path / "net.ckpt", ["brain", "cta"])
    checkpoint = torch.load(path, weights_only=True)
    preprocessing = checkpoint["hyper_parameters"]["preprocessing"]
    checkpoint["mtseg"] |= {"preprocessing": preprocessing, "data": {"brain": {"source": "phantoms"}}}
    torch.save(checkpoint, path)
    loaded = load_checkpoint(path)
    assert loaded.meta["preprocessing"] == preprocessing and loaded.meta["data"] == {"brain": {"source": "phantoms"}}
