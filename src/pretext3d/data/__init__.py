"""Data: real-format loaders, preprocessing, the built-in synthetic phantoms and toy images.

Loaders: MSD Task07, APTOS 2019, unlabelled scan and fundus folders, labelled image folders; :class:`DataSpec`
names one of them (or the phantoms) in a command's config.

The readers' libraries (nibabel, pydicom, pillow) are optional extras, imported only
when a file is read.
"""

from pretext3d.data.aptos import APTOS
from pretext3d.data.cache import CaseCache
from pretext3d.data.folders import DicomFolder, FundusFolder, VolumeDataset, VolumeFolder
from pretext3d.data.io import (
    Volume,
    read_dicom_series,
    read_nifti,
    read_rgb,
    read_volume,
    write_nifti,
    write_png,
)
from pretext3d.data.labelled import LabelledImageFolder
from pretext3d.data.msd import Task07Pancreas, task07_cases
from pretext3d.data.phantoms import (
    PhantomImages,
    ct_phantom,
    ct_phantom_batch,
    fundus_phantom,
    fundus_phantom_batch,
    write_aptos_phantom,
    write_task07_phantom,
)
from pretext3d.data.preprocess import CTPreprocessing, FundusPreprocessing, ben_graham
from pretext3d.data.spec import UNLABELLED_PHANTOMS, DataKind, DataSpec
from pretext3d.data.toy import toy_images

__all__ = [
    "APTOS",
    "UNLABELLED_PHANTOMS",
    "CTPreprocessing",
    "CaseCache",
    "DataKind",
    "DataSpec",
    "DicomFolder",
    "FundusFolder",
    "FundusPreprocessing",
    "LabelledImageFolder",
    "PhantomImages",
    "Task07Pancreas",
    "Volume",
    "VolumeDataset",
    "VolumeFolder",
    "ben_graham",
    "ct_phantom",
    "ct_phantom_batch",
    "fundus_phantom",
    "fundus_phantom_batch",
    "read_dicom_series",
    "read_nifti",
    "read_rgb",
    "read_volume",
    "task07_cases",
    "toy_images",
    "write_aptos_phantom",
    "write_nifti",
    "write_png",
    "write_task07_phantom",
]
