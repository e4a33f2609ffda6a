"""The ONNX importer against the backend test data shipped in the onnx wheel.

Every model of ``onnx/backend/test/data/{simple,pytorch-converted,pytorch-operator,light}`` runs
through ``to_torch`` and is compared with the expected outputs the way onnx's own runner does
(same shape and dtype, ``assert_allclose`` with rtol 1e-3 and atol 1e-7, or the case's
data.json). The light zoo models have no stored input: like onnx's runner
(``onnx/backend/test/runner``) they get ``arange(n).reshape(shape) / n`` in float32, unknown dims
being 1. Failures out of scope are listed in ``OUT_OF_SCOPE``; a model that fails and is not
listed fails the test, and so does a listed one that starts passing (the table stays true, and
docs/onnx-coverage.md quotes it).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from sparsebench.graph.onnx_torch import Unsupported, to_torch  # noqa: E402

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
FOLDERS = ("simple", "pytorch-converted", "pytorch-operator", "light")
_STRINGS = "string tensors (StringNormalizer): out of scope"
OUT_OF_SCOPE = {
    "simple/test_gradient_of_add": "training op ai.onnx.preview.training.Gradient",
    "simple/test_gradient_of_add_and_mul": "training op ai.onnx.preview.training.Gradient",
    **{f"simple/test_strnorm_model_{n}": _STRINGS for n in (
        "monday_casesensintive_lower", "monday_casesensintive_nochangecase",
        "monday_casesensintive_upper", "monday_empty_output",
        "monday_insensintive_upper_twodim", "nostopwords_nochangecase")},
}
SLOW_LIGHT = {"light_densenet121", "light_inception_v1", "light_inception_v2",
              "light_resnet50", "light_bvlc_alexnet", "light_vgg19"}  # several seconds each


def _cases() -> list[Any]:
    out = []
    for folder in FOLDERS:
        root = DATA / folder
        if folder == "light":
            names = sorted(p.stem for p in root.glob("*.onnx"))
        else:
            names = sorted(p.name for p in root.iterdir() if (p / "model.onnx").exists())
        for name in names:
            marks = [pytest.mark.slow] if name in SLOW_LIGHT else []
            out.append(pytest.param(f"{folder}/{name}", marks=marks, id=f"{folder}/{name}"))
    return out


def _load(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString(Path(path).read_bytes())
    return numpy_helper.to_array(t)


def _light_inputs(model: Any) -> list[np.ndarray]:
    """onnx's runner: arange(n) / n in the input's shape, unknown dims 1 (float inputs only)."""
    inits = {i.name for i in model.graph.initializer}
    feeds = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                      for d in value.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds.append((np.arange(n).reshape(shape) / n).astype(np.float32))
    return feeds


def _data_sets(case: str, model: Any) -> tuple[list[Any], float, float]:
    folder, name = case.split("/")
    if folder == "light":
        expected = [_load(str(DATA / folder / f"{name}_output_0.pb"))]
        return [(_light_inputs(model), expected)], 1e-3, 1e-7
    case_dir = DATA / folder / name
    tol = {"rtol": 1e-3, "atol": 1e-7}
    if (case_dir / "data.json").exists():
        tol.update({k: v for k, v in json.loads((case_dir / "data.json").read_text()).items()
                    if k in tol})
    sets = []
    for d in sorted(glob.glob(str(case_dir / "test_data_set_*"))):
        n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
        sets.append(([_load(os.path.join(d, f"input_{i}.pb")) for i in range(n_in)],
                     [_load(os.path.join(d, f"output_{i}.pb")) for i in range(n_out)]))
    return sets, tol["rtol"], tol["atol"]


def _run(case: str) -> None:
    folder, name = case.split("/")
    path = DATA / folder / (f"{name}.onnx" if folder == "light" else f"{name}/model.onnx")
    model = onnx.load(str(path))
    module = to_torch(model)
    sets, rtol, atol = _data_sets(case, model)
    assert sets, f"{case}: no test data"
    for inputs, expected in sets:
        with torch.inference_mode():
            got = module(*(torch.from_numpy(np.array(x)) for x in inputs))
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected)
        for g, ref in zip(got, expected):
            g = g.numpy()
            assert g.shape == ref.shape and g.dtype == ref.dtype, (g.shape, g.dtype, ref.shape,
                                                                   ref.dtype)
            np.testing.assert_allclose(g, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", _cases())
def test_backend_data(case: str) -> None:
    if case not in OUT_OF_SCOPE:
        _run(case)
        return
    with pytest.raises(Unsupported) as err:  # a listed failure must still fail, cleanly
        _run(case)
    assert "\n" not in str(err.value) and "(node " in str(err.value)


def test_every_folder_is_found() -> None:
    counts = {f: sum(1 for c in _cases() if c.values[0].startswith(f + "/")) for f in FOLDERS}
    assert counts == {"simple": 23, "pytorch-converted": 82, "pytorch-operator": 35,
                      "light": 9}
    assert set(OUT_OF_SCOPE) <= {c.values[0] for c in _cases()}
