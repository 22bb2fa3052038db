"""What the bundles write besides weights: classification reports and prediction CSVs (``reports``; their decision
rule, ``operating_point``; pictures, ``charts``), reconstruction
pictures (``pictures``), pretraining embeddings / reconstructions (``pretrain_outputs``), DICOM SEG (``dicom_seg``),
``torch.export`` programs (``export``)."""

from . import (  # noqa: F401
    charts,
    dicom_seg,
    operating_point,
    pictures,
    pretrain_outputs,
    progress,
    reports,
    segmentation_report,
)
