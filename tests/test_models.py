import pytest
import torch

from ccn.errors import ConfigError
from ccn.heads import FlatHead
from ccn.models import BACKBONES, Classifier, count_parameters, create_backbone

TINY = {  # registry name -> options that keep the forward pass cheap
    "fastnet": {"width": 8}, "resnet9": {"width": 4}, "airbench": {"width": 4}, "resnet20": {"width": 4}, "resnet32": {"width": 4},
    "resnet44": {"width": 4}, "resnet56": {"width": 4}, "resnet110": {"width": 2}, "preact_resnet18": {"width": 4},
    "wide_resnet": {"depth": 10, "widen_factor": 1}, "wrn16_4": {}, "wrn28_10": None,
    "pyramidnet": {"depth": 11, "alpha": 12, "shakedrop": 0.5}, "pyramidnet272": None, "pyramidnet110": None,
}


def test_every_backbone_is_covered():
    assert set(BACKBONES) == set(TINY)


@pytest.mark.parametrize("name", [n for n, o in TINY.items() if o is not None])
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, **TINY[name])
    model = Classifier(backbone, FlatHead(backbone.num_features, 5))
    x = torch.randn(2, 3, 16, 16)
    feats = backbone.forward_features(x)
    assert feats.shape == (2, backbone.num_features)
    logits = model(x)["z"]
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name, classes, published, tolerance", [
    ("resnet9", 10, 6.57e6, 0.01), ("resnet20", 10, 0.27e6, 0.01), ("resnet56", 10, 0.85e6, 0.01),
    ("wrn28_10", 10, 36.5e6, 0.005),
    ("pyramidnet272", 100, 26.0e6, 0.02),
])
def test_parameter_counts_match_the_papers(name, classes, published, tolerance):
    backbone = create_backbone(name)
    total = count_parameters(Classifier(backbone, FlatHead(backbone.num_features, classes)))
    assert abs(total - published) / published < tolerance


def test_shakedrop_is_stochastic_in_training_and_fixed_in_eval():
    torch.manual_seed(0)
    net = create_backbone("pyramidnet", depth=11, alpha=12, shakedrop=0.9)
    x = torch.randn(4, 3, 8, 8)
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    assert torch.allclose(net(x), net(x))


def test_unknown_backbone_and_option():
    with pytest.raises(ConfigError, match="not a known backbone"):
        create_backbone("resnet21")
    with pytest.raises(ConfigError, match="does not take these options"):
        create_backbone("wrn28_10", width=3)


def test_timm_backbone_when_installed():
    """Runs where timm is installed (a timm that is installed but cannot be imported fails here, naming the
    torch/torchvision pair to install). BatchNorm in train mode needs more than one value per channel,
    so a single 32 px image is scored in eval mode and training sees a batch of 2."""
    import importlib.util
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is optional: pip install 'ccn[timm]'")
    backbone = create_backbone("timm:resnet10t")
    assert backbone.eval().forward_features(torch.randn(1, 3, 32, 32)).shape == (1, backbone.num_features)
    assert backbone.train().forward_features(torch.randn(2, 3, 32, 32)).shape == (2, backbone.num_features)


@pytest.mark.parametrize("failure", [
    pytest.param(RuntimeError("operator torchvision::nms does not exist"), id="torchvision-built-for-another-torch"),
    pytest.param(OSError("libcudart.so.12: cannot open shared object file"), id="cuda-library-missing"),
    pytest.param(ImportError("cannot import name 'InterpolationMode' from 'torchvision.transforms'"),
                 id="torchvision-too-old"),
])
def test_a_timm_or_torchvision_that_fails_to_import_names_the_pair_to_install(monkeypatch, capsys, tmp_path,
                                                                            failure):
    """A CPU torch beside the registry's CUDA torchvision fails with a RuntimeError at `import timm` (it
    imports torchvision); that was a traceback with exit 1."""
    import builtins
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.split(".")[0] in ("timm", "torchvision"):
            raise failure
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ConfigError) as err:
        create_backbone("timm:resnet18")
    message = str(err.value)
    assert "\n" not in message and f"({type(failure).__name__}: {failure})" in message
    assert "torch==2.13.0 torchvision==0.28.0" in message and "torch==2.15.0 torchvision==0.29.2" in message
    assert "--index-url https://download.pytorch.org/whl/cpu" in message
    from ccn.cli import main
    assert main(["train", "--set", "model.name=timm:resnet18", "--set", "train.progress=false",
                 "--set", "data.train_per_class=2", "--set", "data.test_per_class=1", "--set", "train.epochs=2",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().startswith("ccn: error: model.name=timm:resnet18 needs timm")


def test_timm_missing_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match="needs timm"):
        create_backbone("timm:resnet18")
