from .classification import (
    CHESTXRAY14_CLASSES, HAM10000_CLASSES, check_labels, chestxray14_csv, dataset_items,
    ham10000_csv, image_folder, messidor2_csv, select_split, split_items, spread_items, class_names_for, label_source,
    folder_classes, match_folders,
)
from .caching import CACHE_KINDS, cached_dataset, item_hash
from .segmentation import check_segmentation_items, label_lookup, segmentation_items
from .readers import Datalist, DatalistError, image_list, check_files, load_datalist, load_medmnist_npz
from . import checks, dicom, geometry, intensity, transforms  # noqa: F401
from .preprocessing import preprocessing
from .synthetic import CLASSES_2D, lesion_batch, ORGANS_3D, make_synthetic_2d, make_synthetic_3d, make_synthetic_dataset, synthetic_datalist, trained_on

__all__ = [
    "preprocessing", "Datalist", "class_names_for", "label_source", "folder_classes", "match_folders",
    "CHESTXRAY14_CLASSES", "HAM10000_CLASSES", "chestxray14_csv", "ham10000_csv",
    "image_folder", "messidor2_csv", "select_split", "split_items", "spread_items", "dataset_items", "segmentation_items", "check_segmentation_items", "label_lookup", "check_labels",
    "DatalistError", "image_list", "check_files", "load_datalist", "load_medmnist_npz", "make_synthetic_2d", "make_synthetic_3d",
    "make_synthetic_dataset", "synthetic_datalist", "trained_on", "lesion_batch", "CLASSES_2D", "ORGANS_3D", "CACHE_KINDS", "cached_dataset", "item_hash",
]
