"""Synthetic 3-D phantoms: mtseg's built-in default data.

The paper's images (brain T1 MRI, breast T1 MRI, cardiac CTA) are not public, so
mtseg generates phantoms with the same classes and the same difficulty: in every
task the target classes share their intensity distribution with other structures,
so a per-voxel intensity classifier cannot find them (see :mod:`mtseg.evaluation.baseline`)
and a network needs spatial context.

* **brain** (T1 MRI, 1.0 mm, default 96 x 112 x 96 voxels): a head scaled to about
  60 % of adult size. Scalp fat, skull, extra-cerebral CSF, a folded cortical ribbon
  with sulci, white matter, lateral and third ventricles, caudate, putamen and
  thalami, a cerebellum with folia and a brain stem.
* **breast** (T1 MRI, 1.3 mm, default 112 x 80 x 64 voxels): two fatty breasts with
  fibroglandular tissue, lying anterior to a thin pectoral muscle sheet, intercostal
  muscle, ribs, sternum, lungs and the heart. Pectoral and intercostal muscle are one
  tissue type, so they share their intensity distribution.
* **cta** (CT angiography in HU, 0.45 mm, default 128 x 128 x 96 voxels): a thorax
  and heart scaled to about 40 % of adult size with coronary arteries of real size
  (1.5-4 mm diameter) running in the epicardial fat from the aortic root (left main
  into LAD and circumflex with diagonal and marginal branches, right coronary artery
  with a posterior descending branch). Coronary lumen and blood pool share one
  intensity distribution. Voxels outside a circular field of view are -2048 HU.

Every subject varies in size, pose, shape, tissue intensities, bias field (MRI) and
noise. Anatomy is laid out in millimetres for the task's default field of view and
scaled isotropically to fit the field of view of the requested grid
(``shape * spacing``), so any grid shows the whole anatomy and the same seed gives
the same anatomy at every resolution. Keep ``shape * spacing`` near the default to
keep anatomical sizes (e.g. coronary diameters) realistic.

Task-local labels follow :mod:`mtseg.tasks`: brain 1 white matter, 2 cortical grey
matter, 3 basal ganglia and thalami, 4 ventricular CSF, 5 cerebellum, 6 brain stem;
breast 1 pectoral muscle; cta 1 coronary arteries; 0 is everything else.

Modules: :mod:`~mtseg.data.phantoms.dataset` (grid spec, generation of one subject, data sets
written as NIfTI), one generator per task (:mod:`~mtseg.data.phantoms.brain`,
:mod:`~mtseg.data.phantoms.breast`, :mod:`~mtseg.data.phantoms.cta`) and the drawing helpers
they share (:mod:`~mtseg.data.phantoms.drawing`).
"""

from mtseg.data.phantoms.dataset import (
    GENERATOR_VERSION,
    MIN_AXIS_VOXELS,
    PhantomSpec,
    default_spec,
    generate_phantom,
    write_phantom_dataset,
)

__all__ = [
    "GENERATOR_VERSION",
    "MIN_AXIS_VOXELS",
    "PhantomSpec",
    "default_spec",
    "generate_phantom",
    "write_phantom_dataset",
]
