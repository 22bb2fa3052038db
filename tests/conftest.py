import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = os.path.join(REPO, "bundles")
sys.path.insert(0, REPO)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: the workers share the cores; each worker, and every bundle run it starts (OMP_NUM_THREADS is
    # inherited), uses its share -- on 2 cores and 2 workers one thread each, never 2 x 2 threads fighting for 2 cores
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def synth2d(tmp_path_factory):
    from medmae_ext.data import make_synthetic_2d

    d = str(tmp_path_factory.mktemp("synth2d"))
    make_synthetic_2d(d, num_images=60, size=64, seed=1)
    return d


@pytest.fixture(scope="session")
def synth3d(tmp_path_factory):
    from medmae_ext.data import make_synthetic_3d

    d = str(tmp_path_factory.mktemp("synth3d"))
    make_synthetic_3d(d, num_volumes=6, size=64, seed=1, val_frac=0.34)
    return d


def exception_chain(exc):
    """``exc`` and every exception it wraps (MONAI wraps config, transform and dataset errors in RuntimeErrors)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def raised(info, kind) -> str:
    """The message of the first ``kind`` exception in the chain of a ``pytest.raises`` result (which must have one)."""
    found = [e for e in exception_chain(info.value) if isinstance(e, kind)]
    assert found, f"no {kind.__name__} in the chain of {info.value!r}"
    return str(found[0])


def bundle_config(bundle: str, name: str) -> str:
    return os.path.join(BUNDLES, bundle, "configs", name)


def bundle_configs(bundle: str, config) -> list[str]:
    """The files of ``config`` as MONAI merges them: an override on its base (``medmae_ext.bundle.workflow.config_files``)."""
    from medmae_ext.bundle.workflow import config_files

    return config_files(os.path.join(BUNDLES, bundle, "configs"), config)


def run_bundle(bundle: str, config, run_id: str = "training", **override):
    """Run a bundle config in-process, like `python -m monai.bundle run <run_id> --config_file ...`."""
    from medmae_ext.bundle.workflow import run_bundle_config

    return run_bundle_config(os.path.join(BUNDLES, bundle, "configs"), config, run_id, **override)


def initial_weights(tmp_path_factory, bundle: str, config: str) -> str:
    """``model.pt`` of a bundle's ``network_def`` as initialised (seed 0): checks plumbing, not quality."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(bundle_configs(bundle, config))
    p["bundle_root"] = "."
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"{bundle}_init") / "model.pt"
    torch.save(p.get_parsed_content("network_def").state_dict(), path)
    return str(path)


class captured_warnings:
    """Collect the WARNING+ (or ``level``+) messages of one logger (a bundle's logging.conf replaces pytest's own
    log capture)."""

    def __init__(self, name: str, level: int | None = None):
        import logging

        self.logger, self.messages = logging.getLogger(name), []
        self.handler = logging.Handler(logging.WARNING if level is None else level)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def place_trained_weights(bundle_dir: str, bundle: str, config, trained_on: str = "synthetic") -> str:
    """``models/[3d/]model.pt`` of ``config``'s network as initialised (seed 0) with the run record a finished run
    of those settings writes beside it (``models/metadata.json``): what a training run leaves, in a second.
    ``bundle_dir`` is the bundle's folder (its ``bundle_root``). Returns the ``model.pt`` path."""
    from monai.bundle import ConfigParser

    from medmae_ext.bundle.record import RunRecordWriter
    from medmae_ext.training.resume import RunIdentity

    p = ConfigParser()
    p.read_config(bundle_configs(bundle, config))
    p["bundle_root"] = str(bundle_dir)
    ckpt_dir = p.get_parsed_content("ckpt_dir")
    os.makedirs(ckpt_dir, exist_ok=True)
    torch.manual_seed(0)
    net = p.get_parsed_content("network_def")
    path = os.path.join(ckpt_dir, "model.pt")
    torch.save(net.state_dict(), path)
    settings = p.get_parsed_content("run_settings")
    identity = RunIdentity(net, "scratch", [], "synthetic", 1, settings)
    i = next(i for i, h in enumerate(p["train#handlers"]) if str(h.get("_target_", "")).endswith(".RunRecordWriter"))
    RunRecordWriter(os.path.join(ckpt_dir, "metadata.json"), p.get_parsed_content(f"train#handlers#{i}#metadata_file"),
                    settings, identity, p[f"train#handlers#{i}#kind"], trained_on, trained_on).write(None, "finished")
    return path
