"""MONAI's own bundle checks on ONE packed bundle, run as the model zoo's CI runs them: in a fresh interpreter whose
only ``medmae_ext`` is the copy shipped inside the bundle.

    python tests/zoo_checks.py <bundle dir> <schema file or ''> <step> [...]

steps: ``import`` (medmae_ext comes from the bundle), ``metadata`` (verify_metadata against the schema),
``net_in_out`` (verify_net_in_out on inference.json, and inference_3d.json + metadata_3d.json where they exist),
``export`` (ckpt_export of models/model.pt, and models/3d/model.pt; the TorchScript module gives the eager
network's output), ``properties:<workflow type>:<config>[+<config>]`` (ConfigWorkflow.initialize +
check_properties == []), ``load:<bundle name>:<bundle_dir>`` (monai.bundle.load of a downloaded bundle: every
tensor of the returned network equals models/model.pt's). Prints ``OK <step>`` per step; any failure raises.
Not a test module: tests/test_zoo_pack.py runs it.
"""

import os
import sys

ROOT = os.path.abspath(sys.argv[1])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the zoo CI puts the bundle first on sys.path; the repository (and this tests/ folder) must not be reachable
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") not in (REPO, os.path.join(REPO, "tests"))]

import torch  # noqa: E402


def _configs(spec: str) -> list[str]:
    """``a.json+b.json``: those files merged; an override alone (``train_3d.json``, ``evaluate.json``) on its base."""
    from medmae_ext.bundle.workflow import config_files

    return config_files(os.path.join(ROOT, "configs"), spec.split("+"))


def _meta(spec: str) -> list[str]:
    metas = [os.path.join(ROOT, "configs", "metadata.json")]
    if any(c.endswith("_3d.json") for c in spec.split("+")):
        metas.append(os.path.join(ROOT, "configs", "metadata_3d.json"))
    return metas


def _inference_specs() -> list[tuple[str, str]]:
    specs = [("inference.json", os.path.join("models", "model.pt"))]
    if os.path.isfile(os.path.join(ROOT, "configs", "inference_3d.json")):
        specs.append(("inference.json+inference_3d.json", os.path.join("models", "3d", "model.pt")))
    return specs


def step_import() -> None:
    import medmae_ext

    where = os.path.abspath(medmae_ext.__file__)
    assert where.startswith(ROOT + os.sep), f"medmae_ext was imported from {where}, not from the bundle {ROOT}"


def step_metadata(schema: str) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(ROOT, "configs", "metadata.json"), filepath=schema)


def step_net_in_out() -> None:
    from monai.bundle import verify_net_in_out

    for spec, _ in _inference_specs():
        verify_net_in_out(net_id="network_def", meta_file=_meta(spec), config_file=_configs(spec), bundle_root=ROOT)


def step_export() -> None:
    from monai.bundle import ConfigParser, ckpt_export

    for spec, ckpt in _inference_specs():
        ts = os.path.join(ROOT, "models", f"verify_{len(spec)}.ts")
        # ckpt_export takes one metadata file: the zoo's (configs/metadata.json) for 2D; for 3D the one the 3D run
        # wrote next to its model.pt, which must agree with configs/metadata.json + metadata_3d.json
        meta = _meta(spec)
        if len(meta) > 1:
            merged, run = ConfigParser(), ConfigParser()
            merged.read_meta(meta)
            run.read_meta(os.path.join(ROOT, os.path.dirname(ckpt), "metadata.json"))
            for key in ("inputs#image#num_channels", "inputs#image#spatial_shape", "inputs#image#modality",
                        "outputs#pred#num_channels"):
                a, b = merged.get(f"_meta_#network_data_format#{key}"), run.get(f"_meta_#network_data_format#{key}")
                assert a == b, f"{key}: configs/metadata_3d.json says {a}, the 3D run's metadata.json {b}"
            meta = [os.path.join(ROOT, os.path.dirname(ckpt), "metadata.json")]
        ckpt_export(net_id="network_def", filepath=ts, ckpt_file=os.path.join(ROOT, ckpt), meta_file=meta[0],
                    config_file=_configs(spec), bundle_root=ROOT)
        parser = ConfigParser()
        parser.read_config(_configs(spec))
        parser.read_meta(meta)
        parser["bundle_root"] = ROOT
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(os.path.join(ROOT, ckpt), map_location="cpu", weights_only=True))
        net.eval()
        fmt = parser.get("_meta_#network_data_format#inputs#image")
        x = torch.rand(2, fmt["num_channels"], *fmt["spatial_shape"])
        scripted = torch.jit.load(ts)
        with torch.no_grad():
            assert torch.allclose(scripted(x), net(x), atol=1e-5), f"{ts} differs from the eager network"
        os.remove(ts)


def step_properties(kind: str, spec: str) -> None:
    from monai.bundle import ConfigWorkflow

    # a training config's resume logic would set the shipped models/model.pt aside: its outputs go elsewhere here
    extra = {"ckpt_dir": os.path.join(ROOT, "..", f"{os.path.basename(ROOT)}_train_check")} if kind == "train" else {}
    wf = ConfigWorkflow(config_file=_configs(spec), meta_file=_meta(spec), logging_file=False, workflow_type=kind,
                        bundle_root=ROOT, **extra)
    wf.initialize()
    missing = wf.check_properties()
    assert missing == [], f"{spec}: MONAI properties missing or wrong: {missing}"


def step_load(name: str, bundle_dir: str) -> None:
    import monai.bundle

    net = monai.bundle.load(name=name, bundle_dir=bundle_dir, workflow_type="inference", device="cpu")
    state = torch.load(os.path.join(bundle_dir, name, "models", "model.pt"), map_location="cpu", weights_only=True)
    own = net.state_dict()
    assert own, "monai.bundle.load returned no network"
    differ = [k for k in own if k not in state or not torch.equal(own[k], state[k])]
    assert not differ, f"monai.bundle.load left {len(differ)} of {len(own)} tensors unloaded, e.g. {differ[:3]}"


if __name__ == "__main__":
    schema = sys.argv[2]
    for step in sys.argv[3:]:
        name, *args = step.split(":", 1)
        args = args[0].split(":", 1) if args else []
        if name == "import":
            step_import()
        elif name == "metadata":
            step_metadata(schema)
        elif name == "net_in_out":
            step_net_in_out()
        elif name == "export":
            step_export()
        elif name == "properties":
            step_properties(*args)
        elif name == "load":
            step_load(*args)
        else:
            raise SystemExit(f"unknown step {step!r}")
        print(f"OK {step}", flush=True)
