"""Real CT / MRI from ../shared/data/ct (TotalSegmentator test files): inference masks keep the input's grid and
orientation, DICOM series folders are inputs in their own right, thin and int32 volumes work. Skipped where
../shared is absent (a user's clone)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import raised, REPO, bundle_config, run_bundle

CT = os.path.join(os.path.dirname(REPO), "shared", "data", "ct")
pytestmark = pytest.mark.skipif(not os.path.isdir(CT), reason="../shared/data/ct is not present")
B = "unetr_segmentation"
# 3 mm resampling and feature_size 8 keep a CPU sliding-window pass to seconds; what is tested (grid, affine,
# orientation, names) does not depend on either
SMALL = {"pixdim": [3.0, 3.0, 3.0], "feature_size": 8, "num_workers": 0}


@pytest.fixture(scope="module")
def unetr_root(tmp_path_factory):
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("unetr_ct")
    p = ConfigParser()
    p.read_config(bundle_config(B, "inference.json"))
    p.update({"bundle_root": ".", "feature_size": 8})
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
    """The 3D pretraining bundle on a folder of real CT volumes (int32 / int16) and a DICOM series listed in a
    datalist, and on the 20-slice MRI with --modality MR: the thin ones are padded to the 64^3 crop. The MRI in the
    CT folder stops the CT run, naming it (the HU window would clip 40% of it to 1)."""
    from medmae_ext.errors import InputError

    fast = dict(epochs=1, batch_size=2, num_samples=1, num_workers=0, picture_interval=100)
    dl = {"training": [{"image": os.path.join(CT, "example_ct_dicom")}, {"image": os.path.join(CT, "example_ct.nii.gz")}]}
    json.dump(dl, open(tmp_path / "dl.json", "w"))
    wf = run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "a"), data_path=str(tmp_path / "dl.json"),
                    **fast)
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 1
    mr = {"training": [{"image": os.path.join(CT, "example_mr_sm.nii.gz")}] * 1}
    json.dump(mr, open(tmp_path / "mr.json", "w"))
    wf = run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "mr"), data_path=str(tmp_path / "mr.json"),
                    modality="MR", **{**fast, "batch_size": 1})
    assert torch.isfinite(torch.as_tensor(wf.parser.get_parsed_content("train#trainer").state.output["loss"]))
    with pytest.raises(Exception) as info:
        run_bundle("mae_pretrain", "train_3d.json", bundle_root=str(tmp_path / "b"), data_format="images",
                   data_path=CT, data_kwargs={"pattern": "*"}, **fast)
    assert "example_mr_sm.nii.gz' does not look like a CT" in raised(info, InputError)


def _clinical_copy(series, dst):
    """The shared series is anonymised (study / series UIDs blanked); a clinical series has them."""
    import pydicom

    os.makedirs(dst)
    study, ser = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted(os.listdir(series)):
        ds = pydicom.dcmread(os.path.join(series, f))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ser
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(os.path.join(dst, f))
    return str(dst)


def test_dicom_series_segmentation_is_also_written_as_dicom_seg_on_the_source_slices(unetr_root, tmp_path):
    """--dicom_seg True: <series>_seg.dcm references the series and each of its frames is the NIfTI mask's voxels at
    that source slice -- the slice found by its pixel content in ITK's volume, independently of the writer's
    geometry. An anonymised series (no study / series UID) stops with that said."""
    import highdicom as hd
    import itk
    import pydicom

    from medmae_ext.errors import InputError

    with pytest.raises(Exception) as info:
        run_bundle(B, "inference.json", run_id="run", bundle_root=str(unetr_root),
                   input_dir=os.path.join(CT, "example_ct_dicom"), output_dir=str(tmp_path / "anon"), dicom_seg=True,
                   **SMALL)
    e = info.value
    while e is not None and not isinstance(e, InputError):
        e = e.__cause__ or e.__context__
    assert e is not None and "no StudyInstanceUID, SeriesInstanceUID" in str(e) and "example_ct_dicom" in str(e)
    series = _clinical_copy(os.path.join(CT, "example_ct_dicom"), tmp_path / "example_ct_dicom")
    run_bundle(B, "inference.json", run_id="run", bundle_root=str(unetr_root), input_dir=series,
               output_dir=str(tmp_path / "out"), dicom_seg=True, **SMALL)
    assert sorted(os.listdir(tmp_path / "out")) == ["example_ct_dicom_seg.dcm", "example_ct_dicom_seg.nii.gz"]
    mask = np.asarray(nib.load(tmp_path / "out" / "example_ct_dicom_seg.nii.gz").dataobj)  # [i, j, k]
    assert np.unique(mask).size > 1
    seg = hd.seg.segread(tmp_path / "out" / "example_ct_dicom_seg.dcm")
    files = sorted(os.listdir(series))
    sources = [pydicom.dcmread(os.path.join(series, f), stop_before_pixels=True) for f in files]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "kidney", "aorta"]
    assert str(seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning) == "Liver"
    volume = itk.array_from_image(itk.imread(series))  # [k, j, i], as the bundle's reader stored the volume
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
                                               combine_segments=True)
    for f, frame in zip(files, frames):
        pixels = itk.array_from_image(itk.imread(os.path.join(series, f))).reshape(volume.shape[1:])
        k = [n for n in range(volume.shape[0]) if np.array_equal(volume[n], pixels)]
        assert len(k) == 1, f
        np.testing.assert_array_equal(frame, mask[:, :, k[0]].T, err_msg=f)
