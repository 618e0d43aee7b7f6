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
    timm = pytest.importorskip("timm", reason="timm is optional: pip install 'ccn[timm]'")
    backbone = create_backbone("timm:resnet10t")
    assert backbone.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, backbone.num_features)
    del timm


def test_timm_missing_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match="needs timm"):
        create_backbone("timm:resnet18")
