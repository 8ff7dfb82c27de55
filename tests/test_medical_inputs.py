"""Stages read DICOM frames and NIfTI slices through the manifest's `index` column."""
import shutil

import pytest

from medalign import cli

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def test_pretrain_on_dicom_frames_and_nifti_slices(tmp_path, capsys):
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"):
        shutil.copy(get_testdata_file(name, download=False), tmp_path / name)
    shutil.copy(f"{data_path}/anatomical.nii", tmp_path / "anatomical.nii")
    rows = ["path,index,split", "CT_small.dcm,,unlabeled", "MR_small.dcm,,unlabeled",
            *(f"rtdose.dcm,{k},unlabeled" for k in range(0, 15, 3)),
            *(f"anatomical.nii,{k},unlabeled" for k in range(5, 10))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cli.main(["pretrain", f"data.manifest={tmp_path / 'm.csv'}", "data.splits=[unlabeled]",
              "backbone.name=test_resnet", "backbone.img_size=32", "method.name=simclr",
              "data.batch_size=4", "optim.epochs=1", "--out", str(tmp_path / "out")])
    assert "images               12" in capsys.readouterr().out

    (tmp_path / "m.csv").write_text("path,index,split\nrtdose.dcm,15,unlabeled\nanatomical.nii,x,unlabeled\n")
    with pytest.raises(SystemExit):
        cli.main(["pretrain", f"data.manifest={tmp_path / 'm.csv'}", "data.splits=[unlabeled]",
                  "--out", str(tmp_path / "out2")])
    assert "index 'x' of anatomical.nii is not an integer" in capsys.readouterr().err
