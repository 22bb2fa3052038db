from .readers import DatalistError, check_files, load_datalist, load_medmnist_npz
from .synthetic import CLASSES_2D, lesion_batch, ORGANS_3D, make_synthetic_2d, make_synthetic_3d, make_synthetic_dataset

__all__ = [
    "DatalistError", "check_files", "load_datalist", "load_medmnist_npz", "make_synthetic_2d", "make_synthetic_3d",
    "make_synthetic_dataset", "lesion_batch", "CLASSES_2D", "ORGANS_3D",
]
