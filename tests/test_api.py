"""The Python API of docs/api.md: ccn.load and ccn.flat_state_dict. The page's examples are executed here."""

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ccn
from ccn import config as cfgmod
from ccn.errors import CCNError
from ccn.predict import iter_predictions
from ccn.runs import load_run
from conftest import REPO, TINY_RUN

API_PAGE = REPO / "docs" / "api.md"


def _photos(folder, sizes=((11, 7), (5, 13))):
    """RGB images of other sides than the run's stored square, so that fitting them is exercised."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = []
    for name, (w, h) in zip("ab", sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        names.append(str(folder / f"{name}.png"))
    return names


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_the_api_page_examples_run(tiny_run, tmp_path, monkeypatch):
    """Every ```python block of docs/api.md, in order, in one namespace, in a folder holding runs/my-run
    (a small ccn run) and photos/a.png, photos/b.png: the page's promises (asserts) hold."""
    shutil.copytree(tiny_run, tmp_path / "runs" / "my-run")
    _photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks(API_PAGE.read_text())
    assert len(blocks) >= 5
    namespace = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {k + 1}", "exec"), namespace)  # noqa: S102 - our own page
    assert namespace["model"].groups is not None  # the groups block ran its ccn branch
    assert (tmp_path / "my-weights.safetensors").is_file()


@pytest.fixture(scope="module")
def cropped_run(tmp_path_factory):
    """A flat run with an evaluation crop (data.crop=random_resized) and test-time mirrors: the parts of the
    preprocessing a plain resize would get wrong."""
    import io

    from ccn.pipeline import run_training
    from ccn.runs import NewRun
    from ccn.tracking import RunLog
    out = tmp_path_factory.mktemp("cropped") / "run"
    config = cfgmod.load(None, [*TINY_RUN, "method.name=flat", "data.image_size=14", "data.crop=random_resized",
                                "data.flip=true", "train.tta=mirror", "train.channels_last=false"])
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    return out


@pytest.mark.parametrize("which", ["tiny_run", "cropped_run"])
def test_load_gives_the_probabilities_ccn_predict_prints(which, request, tmp_path):
    run = request.getfixturevalue(which)
    paths = _photos(tmp_path)
    model = ccn.load(run)
    config, network, hierarchy, saved = load_run(run)
    expected = list(iter_predictions(network, hierarchy, saved, config.method.inference, paths,
                                     top=len(model.classes), tta=config.train.tta))
    with torch.no_grad():
        probs = model(paths)
    for row, entry in zip(probs, expected):
        for guess in entry["top"]:
            assert row[model.classes.index(guess["class"])].item() == pytest.approx(guess["probability"], abs=1e-6)
    assert model.predict(paths, top=3) == [{"path": e["path"], "top": e["top"][:3]} for e in expected]
    if which == "cropped_run":
        assert model.preprocess["eval_crop"] == 0.875 and model.image_size == 14 and model.tta == "mirror"
        assert model.groups is None and model.group_of is None and model.hierarchy is None
    else:
        assert sorted(c for g in model.groups for c in g) == sorted(model.classes)


def test_plain_torch_takes_the_flat_state_dict(tiny_run):
    """flat_state_dict names every backbone tensor under `prefix` and the flat head as `classifier`: a plain
    Sequential built from scratch loads it strictly and computes the run's flat logits."""
    from ccn.models import backbone_from_config
    model = ccn.load(tiny_run)
    config = load_run(tiny_run)[0]
    fresh = torch.nn.Sequential(backbone_from_config(config.model), torch.nn.Linear(model.flat.in_features,
                                                                                    len(model.classes)))
    state = ccn.flat_state_dict(tiny_run, prefix="0.", classifier="1")
    fresh.load_state_dict(state)
    x = torch.randn(3, 3, model.image_size, model.image_size)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.network.head(model.network.backbone.forward_features(x))["z"])
    backbone_keys = {k[len("0."):] for k in state if k.startswith("0.")}
    assert backbone_keys and set(ccn.flat_state_dict(model, classifier="fc")) == backbone_keys | {"fc.weight", "fc.bias"}


def test_a_timm_run_maps_onto_timm_names_without_the_adapter_prefix():
    """Our timm adapter holds the timm model under `model.`; flat_state_dict strips it, so the keys are
    timm.create_model's own (checked with a stand-in module: timm itself is an optional extra)."""
    from ccn.heads import FlatHead
    from ccn.models import Classifier
    from ccn.models.timm_adapter import TimmBackbone
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    inner.num_features = 4
    network = Classifier(TimmBackbone(inner), FlatHead(4, 5))
    assert sorted(ccn.flat_state_dict(network, classifier="head.fc")) == ["0.bias", "0.weight", "head.fc.bias",
                                                                           "head.fc.weight"]


@pytest.mark.parametrize("images, message", [
    pytest.param(lambda s: torch.randn(1, 3, s, s), "a float image tensor with values from", id="normalised-float"),
    pytest.param(lambda s: torch.zeros(1, s, s, 3, dtype=torch.uint8), "channels last? use .permute(0, 3, 1, 2)",
                 id="channels-last"),
    pytest.param(lambda s: torch.zeros(1, s, s, dtype=torch.int64), "pass (N, 3, H, W) or (3, H, W) RGB",
                 id="grey-tensor"),
    pytest.param(lambda s: torch.zeros(1, 3, s, s, dtype=torch.int32), "an image tensor of int32", id="int32"),
    pytest.param(lambda s: np.zeros((s, s, 3)), "cannot read ndarray as an image", id="numpy-array"),
    pytest.param(lambda s: [], "no images given", id="empty-list"),
    pytest.param(lambda s: "no/such/image.png", "image no/such/image.png does not exist", id="missing-file"),
])
def test_load_refuses_what_it_cannot_preprocess_as_the_run_did(tiny_run, images, message):
    model = ccn.load(tiny_run)
    with pytest.raises(CCNError, match=re.escape(message)):
        model(images(model.preprocess["image_size"]))


def test_flat_state_dict_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(CCNError, match="run folder .* does not exist"):
        ccn.flat_state_dict(tmp_path / "nothing")
    with pytest.raises(CCNError, match="flat_state_dict takes a run folder, a ccn.load\\(\\) result or a ccn network"):
        ccn.flat_state_dict(torch.nn.Linear(2, 2))
