"""The bundle itself: where it lives (``paths``), its run record (``record``, ``metadata``), the checks made on a
run's settings before training (``checks``), running a config in-process (``workflow``), process settings
(``runtime``)."""

from . import checks, metadata, paths, record, runtime, settings, workflow  # noqa: F401
from .paths import bundle_root  # noqa: F401
