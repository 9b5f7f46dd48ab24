"""LGG brain MRI FLAIR slices (Buda et al. 2019; TCGA-LGG via TCIA) in BMAD's anomaly-detection layout.

``lgg-brain-ad.zip`` holds FLAIR slices (the channel at index 1 of the original
pre-contrast / FLAIR / post-contrast TIFs) of 20 TCGA lower-grade-glioma
patients, arranged as MVFA reads BMAD's BrainMRI, so it is read by the BMAD
reader (:mod:`medad.data.bmad`) pointed at its own top folder::

    lgg-brain-ad/train/good/img/<PATIENT>_<n>.png                 normal slices only
    lgg-brain-ad/{valid,test}/{good,Ungood}/img/<PATIENT>_<n>.png
    lgg-brain-ad/{valid,test}/Ungood/anomaly_mask/<PATIENT>_<n>.png  0/255, same name as its image

Classes ``("good", "Ungood")`` -> 0 / 1 (Ungood: the slice's FLAIR mask has a
tumour pixel); a good slice gets an all-false mask. Images are gray, 256x256.
Group = the TCGA patient id ``TCGA_XX_YYYY_DATE``; the archive's splits are by
patient (8 / 3 / 9 patients): train 159 good; val 73 good + 28 Ungood; test
161 good + 99 Ungood. It is the closest open analogue of BMAD's BrainMRI
(BraTS FLAIR slices), not BMAD itself.
"""
from __future__ import annotations

from medad.data.bmad import Sub, spec_for
from medad.data.registry import register

NAME = "lgg_brain_ad"
SUB = Sub(NAME, "", "LGG FLAIR slices (TCGA-LGG, Buda et al. 2019) in BMAD's anomaly-detection layout",
          "brain MRI", pixel_level=True, top="lgg-brain-ad")
SPEC = register(spec_for(SUB, NAME))
