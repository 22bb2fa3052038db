"""Real CT / MRI from ../shared/data/ct (TotalSegmentator test files): inference masks keep the input's grid and
orientation, DICOM series folders are inputs in their own right, thin and int32 volumes work. Skipped where
../shared is absent (a user's clone)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, bundle_config, run_bundle

CT = os.path.join(os.path.dirname(REPO), "shared", "data", "ct")
pytestmark = pytest.mark.skipif(not os.path.isdir(CT), reason="../shared/data/ct is not present")
B = "unetr_segmentation"
# 3 mm resampling and feature_size 8 keep a CPU sliding-window pass to seconds; what is tested (grid, affine,
# orientation, names) does not depend on either
SMALL = {"pixdim": [3.0, 3.0, 3.0], "network_def#feature_size": 8, "num_workers": 0}


@pytest.fixture(scope="module")
def unetr_root(tmp_path_factory):
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("unetr_ct")
    p = ConfigParser()
    p.read_config(bundle_config(B, "inference.json"))
    p.update({"bundle_root": ".", "network_def#feature_size": 8})
    torch.manual_seed(0)
    os.makedirs(root / "models")
    torch.save(p.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def _infer(root, input_dir, glob, out):
    run_bundle(B, "inference.json", run_id="run", bundle_root=str(root), input_dir=str(input_dir), input_glob=glob,
               output_dir=str(out), **SMALL)


def test_masks_keep_grid_and_orientation_of_ras_and_lps_int32_inputs(unetr_root, tmp_path):
    src = nib.load(os.path.join(CT, "example_ct.nii.gz"))
    assert src.get_data_dtype() == np.int32 and nib.aff2axcodes(src.affine) == ("R", "A", "S")
    lps = src.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))  # same patient, other storage order
    os.makedirs(tmp_path / "in")
    nib.save(src, tmp_path / "in" / "ras.nii.gz")
    nib.save(lps, tmp_path / "in" / "lps.nii.gz")
    _infer(unetr_root, tmp_path / "in", "*.nii.gz", tmp_path / "out")
    masks = {}
    for name, img in (("ras", src), ("lps", lps)):
        m = nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
        assert m.shape == img.shape and np.allclose(m.affine, img.affine, atol=1e-4), name
        assert nib.aff2axcodes(m.affine) == nib.aff2axcodes(img.affine)
        masks[name] = np.asarray(nib.as_closest_canonical(m).dataobj)
    assert np.unique(masks["ras"]).size > 1  # a random network still labels something: the check can fail
    np.testing.assert_array_equal(masks["ras"], masks["lps"])  # voxel for voxel the same anatomy


def test_dicom_series_folder_is_an_inference_input_named_after_the_series(unetr_root, tmp_path):
    import itk

    series = os.path.join(CT, "example_ct_dicom")
    _infer(unetr_root, series, "*", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["example_ct_dicom_seg.nii.gz"]
    m = nib.load(tmp_path / "out" / "example_ct_dicom_seg.nii.gz")
    ref = itk.imread(series)
    assert list(m.shape) == list(itk.size(ref))  # 512 x 512 x 20: thinner than the 64-voxel window
    assert np.allclose(m.affine, _itk_ras_affine(ref), atol=1e-3)  # spacing, origin and direction of the series


def _itk_ras_affine(img) -> np.ndarray:
    """The voxel-to-RAS affine of an ITK image (ITK's physical space is LPS)."""
    direction = np.asarray(img.GetDirection()) @ np.diag(np.asarray(img.GetSpacing()))
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = direction, np.asarray(img.GetOrigin())
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


def test_dicom_series_is_a_datalist_image_whose_label_is_checked_on_its_grid(tmp_path):
    import itk

    from medmae_ext.data import check_segmentation_items
    from medmae_ext.errors import LabelError

    series = os.path.join(CT, "example_ct_dicom")
    ref = itk.imread(series)
    hu = itk.array_view_from_image(ref).transpose(2, 1, 0)  # ITK index order (i, j, k)
    lab = np.zeros(hu.shape, np.uint8)
    for c, (lo, hi) in enumerate(((-10, 60), (60, 150), (150, 300), (300, 4000)), start=1):
        lab[(hu > lo) & (hu <= hi)] = c
    names = {"0": "background", "1": "a", "2": "b", "3": "c", "4": "d"}
    affine = _itk_ras_affine(ref)
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "on_grid.nii.gz")
    item = {"image": series, "label": str(tmp_path / "on_grid.nii.gz"), "id": "example_ct_dicom"}
    assert check_segmentation_items([item], names, in_channels=1)
    off = affine.copy()
    off[:3, 3] += affine[:3, 2]  # one slice along the series
    nib.save(nib.Nifti1Image(lab, off), tmp_path / "off_grid.nii.gz")
    with pytest.raises(LabelError, match="different positions in space") as info:
        check_segmentation_items([{**item, "label": str(tmp_path / "off_grid.nii.gz")}], names)
    assert series in str(info.value) and "off_grid.nii.gz" in str(info.value)


def test_pretraining_reads_real_volumes_a_dicom_series_and_thin_mri(tmp_path):
    """The 3D pretraining bundle on a folder of real volumes (int32 / int16 CT, a 20-slice MRI) and a DICOM series
    listed in a datalist: the thin ones are padded to the 64^3 crop."""
    dl = {"training": [{"image": os.path.join(CT, "example_ct_dicom")}, {"image": os.path.join(CT, "example_mr_sm.nii.gz")}]}
    json.dump(dl, open(tmp_path / "dl.json", "w"))
    fast = dict(epochs=1, batch_size=2, num_samples=1, num_workers=0, picture_interval=100)
    wf = run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "a"), data_path=str(tmp_path / "dl.json"),
                    **fast)
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 1
    wf = run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "b"), data_format="images",
                    data_path=CT, data_kwargs={"pattern": "*"}, **fast)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and torch.isfinite(torch.as_tensor(trainer.state.output["loss"]))
