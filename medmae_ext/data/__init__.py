from . import checks, dicom, geometry, intensity, splits, transforms  # noqa: F401
from .caching import CACHE_KINDS, cached_dataset, item_hash
from .classification import dataset_items, folder_classes, image_folder, match_folders
from .label_maps import label_lookup
from .labels import check_labels, class_names_for, classification_items, label_source
from .preprocessing import preprocessing
from .public_csv import CHESTXRAY14_CLASSES, HAM10000_CLASSES, chestxray14_csv, ham10000_csv, messidor2_csv
from .readers import Datalist, DatalistError, check_files, image_list, lazy, load_datalist, load_medmnist_npz
from .segmentation import check_segmentation_items, segmentation_items
from .splits import select_split, split_items, spread_items
from .synthetic import (
    CLASSES_2D,
    ORGANS_3D,
    ensure_synthetic,
    lesion_batch,
    make_synthetic_2d,
    make_synthetic_3d,
    make_synthetic_dataset,
    synthetic_datalist,
    trained_on,
)

__all__ = [
    "preprocessing",
    "Datalist",
    "lazy",
    "classification_items",
    "ensure_synthetic",
    "class_names_for",
    "label_source",
    "folder_classes",
    "match_folders",
    "CHESTXRAY14_CLASSES",
    "HAM10000_CLASSES",
    "chestxray14_csv",
    "ham10000_csv",
    "image_folder",
    "messidor2_csv",
    "select_split",
    "split_items",
    "spread_items",
    "dataset_items",
    "segmentation_items",
    "check_segmentation_items",
    "label_lookup",
    "check_labels",
    "DatalistError",
    "image_list",
    "check_files",
    "load_datalist",
    "load_medmnist_npz",
    "make_synthetic_2d",
    "make_synthetic_3d",
    "make_synthetic_dataset",
    "synthetic_datalist",
    "trained_on",
    "lesion_batch",
    "CLASSES_2D",
    "ORGANS_3D",
    "CACHE_KINDS",
    "cached_dataset",
    "item_hash",
]
