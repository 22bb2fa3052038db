"""What the bundles write besides weights: classification reports and prediction CSVs (``reports``), reconstruction
pictures (``pictures``), pretraining embeddings / reconstructions (``pretrain_outputs``), DICOM SEG (``dicom_seg``),
``torch.export`` programs (``export``)."""

from . import dicom_seg, pictures, pretrain_outputs, progress, reports, segmentation_report  # noqa: F401
