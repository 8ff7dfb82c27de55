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


def test_ct_window_reaches_the_reader_and_the_model_card(tmp_path, capsys, monkeypatch):
    import json

    import numpy as np
    from pydicom.data import get_testdata_file

    from medalign import config
    from medalign.data import readers

    from medalign.data.preprocess_cache import resize_hwc

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "cache"))
    assert set(config.CTWindow.__args__) == set(readers.CT_WINDOWS)
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), tmp_path / "ct.dcm")
    (tmp_path / "m.csv").write_text("path,split\n" + "ct.dcm,unlabeled\n" * 4)
    out = tmp_path / "out"
    cli.main(["pretrain", f"data.manifest={tmp_path / 'm.csv'}", "data.splits=[unlabeled]", "data.intensity.window=lung",
              "data.cache=true", "backbone.name=test_resnet", "backbone.img_size=32", "method.name=simclr",
              "data.batch_size=2", "optim.epochs=1", "--out", str(out)])
    assert json.loads((out / "checkpoint" / "model.json").read_text())["intensity"]["window"] == "lung"
    lung, own = readers.read_image(tmp_path / "ct.dcm", window="lung"), readers.read_image(tmp_path / "ct.dcm")
    assert not np.allclose(lung, own)
    cached = np.load(next((tmp_path / "cache" / "preprocess").glob("*.npy")))[0] / 65535.0
    assert np.allclose(cached, resize_hwc(lung.transpose(1, 2, 0), 32), atol=1e-4)
    with pytest.raises(SystemExit):
        cli.main(["pretrain", f"data.manifest={tmp_path / 'm.csv'}", "data.intensity.window=liver"])
    assert "data.intensity.window" in capsys.readouterr().err


def test_percentile_clipping_and_per_image_zscore(tmp_path):
    import numpy as np
    from PIL import Image

    from medalign.data import readers
    from medalign.data.transforms import eval_view

    a = np.tile(np.arange(100, dtype=np.uint8), (10, 1))
    a[0, 0] = 255  # one hot pixel that min-max scaling would let dominate
    Image.fromarray(a).save(tmp_path / "x.png")
    x = readers.read_image(tmp_path / "x.png", percentiles=(1, 99))[0]
    lo, hi = np.percentile(a / 255.0, (1, 99))
    assert np.allclose(x, np.clip((a / 255.0 - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert x.max() == 1.0 and (x == 1.0).sum() > 1

    z = eval_view(10, mean=(0.5,), std=(0.25,), zscore=True)(image=x[..., None])["image"]
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std(unbiased=False)) - 1) < 1e-3


def test_finetune_records_intensity_and_evaluate_reuses_it(demo_set, tmp_path, capsys):
    import json

    base = [f"data.manifest={demo_set}", "backbone.name=test_resnet", "backbone.img_size=32", "adapter.name=linear",
            "optim.epochs=1"]
    cli.main(["finetune", *base, "data.intensity.percentiles=[1,99]", "data.intensity.zscore=true",
              "--out", str(tmp_path / "ft")])
    meta = json.loads((tmp_path / "ft" / "model" / "model.json").read_text())
    assert meta["intensity"] == {"window": None, "percentiles": [1.0, 99.0], "zscore": True}
    cli.main(["evaluate", f"model={tmp_path / 'ft'}", f"data.manifest={demo_set}", "--out", str(tmp_path / "ev")])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 6
