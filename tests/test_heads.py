import math

import pytest
import torch
from torch.nn import functional as F

from ccn.heads import FlatHead, ThreeLevelHead, TreeHead
from ccn.hierarchy.tree import group_index
from ccn.errors import ConfigError

GROUPS = [[0, 3, 5], [1, 2], [4]]  # 6 classes in 3 groups, not in index order


def make_head(groups=GROUPS, d=8, seed=0, **kw):
    torch.manual_seed(seed)
    return ThreeLevelHead(d, groups, **kw)


def test_probabilities_sum_to_one_and_factorise():
    head = make_head()
    out = head(torch.randn(5, 8))
    log_p, log_within = head.log_probs(out)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(5), atol=1e-6)
    p_group = torch.softmax(out["u"], 1)
    for k, members in enumerate(GROUPS):
        assert torch.allclose(log_within[:, members].exp().sum(1), torch.ones(5), atol=1e-6)
        assert torch.allclose(log_p[:, members].exp().sum(1), p_group[:, k], atol=1e-6)


def test_one_group_soft_equals_softmax_of_v():
    head = make_head(groups=[list(range(6))])
    out = head(torch.randn(4, 8))
    assert torch.allclose(head.scores(out, "soft"), F.log_softmax(out["v"], 1), atol=1e-6)


def test_singleton_groups_hard_equals_soft():
    head = make_head(groups=[[c] for c in range(6)])
    out = head(torch.randn(16, 8))
    assert torch.equal(head.scores(out, "hard").argmax(1), head.scores(out, "soft").argmax(1))
    assert torch.allclose(head.scores(out, "soft"), F.log_softmax(out["u"], 1), atol=1e-6)


def test_hard_rule_picks_inside_the_chosen_group():
    head = make_head()
    out = head(torch.randn(32, 8))
    chosen = out["u"].argmax(1)
    picked = head.scores(out, "hard").argmax(1)
    assert torch.equal(head.group_of[picked], chosen)
    top5 = head.scores(out, "hard").topk(5, 1).indices  # classes of the chosen group come first
    sizes = torch.tensor([len(GROUPS[k]) for k in chosen])
    for row, size, k in zip(top5, sizes, chosen):
        assert set(row[:size].tolist()) == set(GROUPS[int(k)])


def test_loss_equals_negative_log_likelihood_by_hand():
    head = make_head(flat_weight=0.0)
    out = head(torch.randn(6, 8))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    parts = head.loss(out, y)
    u, v = out["u"].detach(), out["v"].detach()
    expected = []
    for i, c in enumerate(y.tolist()):
        k = next(k for k, g in enumerate(GROUPS) if c in g)
        p_k = math.exp(u[i, k]) / sum(math.exp(u[i, j]) for j in range(3))
        p_c = math.exp(v[i, c]) / sum(math.exp(v[i, j]) for j in GROUPS[k])
        expected.append(-math.log(p_k * p_c))
    assert parts["loss"].item() == pytest.approx(sum(expected) / 6, rel=1e-5)
    assert parts["loss"].item() == pytest.approx((parts["cluster"] + parts["within"]).item(), rel=1e-6)


def test_flat_term_is_added_with_its_weight():
    head = make_head(flat_weight=0.5)
    out = head(torch.randn(6, 8))
    y = torch.arange(6)
    parts = head.loss(out, y)
    assert parts["loss"].item() == pytest.approx((parts["cluster"] + parts["within"] + 0.5 * parts["flat"]).item(),
                                                 rel=1e-6)


def test_masked_classes_get_no_gradient():
    head = make_head()
    out = head(torch.randn(1, 8))
    out["v"].retain_grad()
    head.loss(out, torch.tensor([1]))["within"].backward()
    grad = out["v"].grad[0]
    outside = [c for c in range(6) if c not in GROUPS[1]]
    assert torch.all(grad[outside] == 0)
    assert torch.all(grad[GROUPS[1]] != 0)


def test_init_from_flat_copies_level_one():
    flat = torch.nn.Linear(8, 6)
    head = ThreeLevelHead(8, GROUPS, flat=flat, init_from_flat=True)
    assert head.flat is flat and torch.equal(head.masked.weight, flat.weight)


def test_partition_errors():
    with pytest.raises(ConfigError, match="disjoint"):
        group_index([[0, 1], [1, 2]], 3)
    with pytest.raises(ConfigError, match="in no group"):
        group_index([[0], [2]], 3)


def _tree_like(head3: ThreeLevelHead, groups) -> TreeHead:
    from ccn.config import Config
    from ccn.network import tree_head_from
    return tree_head_from(head3, groups, Config().method)


def test_tree_head_of_depth_one_equals_three_level_head():
    head3 = make_head()
    tree = _tree_like(head3, GROUPS)
    h = torch.randn(7, 8)
    out3, outt = head3(h), tree(h)
    for rule in ("soft", "flat", "blend"):
        assert torch.allclose(head3.scores(out3, rule), tree.scores(outt, rule), atol=1e-5), rule
    # hard: the bonus differs in size, the ranking of the classes does not
    assert torch.equal(head3.scores(out3, "hard").argsort(1), tree.scores(outt, "hard").argsort(1))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0])
    l3, lt = head3.loss(out3, y), tree.loss(outt, y)
    for key in ("loss", "cluster", "within"):
        assert lt[key].item() == pytest.approx(l3[key].item(), rel=1e-5)


def test_both_hierarchical_heads_share_one_rule_table():
    """The inference rules are written once (heads.RULE_SCORES); an unknown rule is one clear error."""
    from ccn.heads import RULE_SCORES, HierarchicalHead
    assert ThreeLevelHead.scores is TreeHead.scores is HierarchicalHead.scores
    assert ThreeLevelHead.rules == TreeHead.rules == tuple(RULE_SCORES)
    head3 = make_head()
    for head in (head3, _tree_like(head3, GROUPS)):
        with pytest.raises(ConfigError, match="unknown inference rule 'argmax'; choose one of: soft, hard"):
            head.scores(head(torch.randn(2, 8)), "argmax")


def test_tree_head_depth_two_sums_to_one_and_matches_path_product():
    torch.manual_seed(0)
    tree = [[[0, 3], [5]], [1, 2], [4]]
    head = TreeHead(8, tree, 6)
    out = head(torch.randn(3, 8))
    log_p = head.scores(out, "soft")
    assert torch.allclose(log_p.exp().sum(1), torch.ones(3), atol=1e-6)
    # class 3: root -> node A ([[0,3],[5]]) -> node [0,3] -> 3; nodes are numbered breadth first
    t = out["t"]
    a = F.log_softmax(t[:, [0, 1, 2]], 1)[:, 0]       # A among the 3 top nodes
    b = F.log_softmax(t[:, [3, 4]], 1)[:, 0]          # [0,3] among A's children
    c = F.log_softmax(t[:, [8, 9]], 1)[:, 1]          # 3 among [0,3]'s leaves
    assert torch.allclose(log_p[:, 3], a + b + c, atol=1e-5)
    parts = head.loss(out, torch.tensor([3, 3, 3]))
    assert parts["cluster"].item() + parts["within"].item() == pytest.approx(-(a + b + c).mean().item(), rel=1e-5)


def test_flat_head_rules():
    head = FlatHead(4, 3)
    out = head(torch.randn(2, 4))
    assert head.rules == ("flat",) and torch.equal(head.scores(out), out["z"])


UNEQUAL = [list(range(0, 7)), [7, 8, 9], [10], [11]]  # 12 classes in groups of 7, 3, 1 and 1


def _fit_free_logits(head: torch.nn.Module, num_classes: int, smoothing: float, rule: str) -> torch.Tensor:
    """Train a head on one-hot features (one free set of logits per example, example c labelled c)
    to the optimum of its loss; return p(c|x) of `rule` as a (C, C) matrix."""
    features, labels = torch.eye(num_classes), torch.arange(num_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(400):
        optimizer.zero_grad()
        head.loss(head(features), labels, smoothing)["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        return torch.softmax(head.scores(head(features), rule), dim=1)


@pytest.mark.parametrize("kind", ["flat", "three-level", "tree"])
def test_label_smoothing_spreads_eps_evenly_over_all_classes(kind):
    """The optimum of the smoothed loss is (1 - eps) + eps/C on the true class and eps/C on every
    other class, for every head and whatever the group sizes (a one-class group's class included)."""
    torch.manual_seed(0)
    C, eps = 12, 0.1
    if kind == "flat":
        head, rule = FlatHead(C, C), "flat"
    elif kind == "three-level":
        head, rule = ThreeLevelHead(C, UNEQUAL, flat_weight=0.0), "soft"
    else:
        head, rule = TreeHead(C, [[[0, 1, 2], [3, 4, 5, 6]], [7, 8, 9], [10], [11]], C, flat_weight=0.0), "soft"
    p = _fit_free_logits(head, C, eps, rule)
    wrong = p[~torch.eye(C, dtype=torch.bool)]
    assert torch.allclose(wrong, torch.full_like(wrong, eps / C), rtol=0.05), (wrong.min(), wrong.max())
    assert torch.allclose(p.diagonal(), torch.full((C,), 1 - eps + eps / C), atol=2e-3)


def test_three_level_and_depth_one_tree_losses_agree_with_smoothing():
    head3 = make_head()
    tree = _tree_like(head3, GROUPS)
    h = torch.randn(9, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 4, 4])
    l3, lt = head3.loss(head3(h), y, 0.1), tree.loss(tree(h), y, 0.1)
    for key in ("loss", "cluster", "within", "flat"):
        assert lt[key].item() == pytest.approx(l3[key].item(), rel=1e-5), key


def test_smoothed_loss_is_the_class_level_formula():
    """loss = (1 - eps) * -log p(y|x) + eps * mean over classes of -log p(c|x), plus the flat term."""
    head = make_head(flat_weight=0.0)
    out = head(torch.randn(6, 8))
    y = torch.arange(6)
    log_p, _ = head.log_probs(out)
    by_hand = (0.9 * -log_p[torch.arange(6), y] + 0.1 * -log_p.mean(1)).mean()
    assert head.loss(out, y, 0.1)["loss"].item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_every_head_computes_its_loss_in_float32_under_autocast():
    torch.manual_seed(0)
    h, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    for head in (FlatHead(8, 6), make_head(), _tree_like(make_head(), GROUPS)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(h)
        assert out["z"].dtype == torch.bfloat16  # the logits are bf16 ...
        parts = head.loss(out, y, 0.1)
        assert all(v.dtype == torch.float32 for v in parts.values())  # ... the loss is not
        reference = head.loss({k: v.float() for k, v in out.items()}, y, 0.1)
        assert parts["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-6)


def test_tree_head_keeps_paths_as_edge_numbers_and_reads_files_with_the_old_dense_matrix(tmp_path):
    """The tree head's paths are (C, height) edge numbers rebuilt from the tree, not a saved (edges, C)
    matrix (about C x C floats: issue 18); log p(c|x) equals the sum over the old dense matrix, and a
    weights file written with that matrix ('head.paths') still loads."""
    from ccn.checkpoint import load_weights, save_weights
    from ccn.heads import TreeHead, flatten_tree

    torch.manual_seed(0)
    tree = [[[0, 1], [2]], [3, 4, 5], [[6], [7, 8, 9]]]
    head = TreeHead(8, tree, 10)
    assert "paths" not in dict(head.named_buffers()) and "ancestors" not in head.state_dict()
    assert head.ancestors.shape == (10, head.height) and head.ancestors.dtype == torch.long
    parent, leaf_class = flatten_tree(tree)
    dense = torch.zeros(len(parent) - 1, 10)  # the matrix earlier versions kept
    for node, c in leaf_class.items():
        walk = node
        while walk:
            dense[walk - 1, c], walk = 1.0, parent[walk]
    out = head(torch.randn(5, 8))
    assert torch.allclose(head.class_log_probs(out), head.edge_log_probs(out["t"]) @ dense, atol=1e-6)
    assert torch.allclose(head.class_log_probs(out).exp().sum(1), torch.ones(5), atol=1e-5)
    y = torch.tensor([0, 3, 9, 2, 7])
    assert torch.equal(head.on_path(y), dense[:, y].T)

    model = torch.nn.Module()
    model.head = head
    save_weights(model, tmp_path / "new.safetensors")
    from safetensors.torch import load_file, save_file
    old = {**load_file(str(tmp_path / "new.safetensors")), "head.paths": dense}
    save_file(old, str(tmp_path / "old.safetensors"))
    fresh = torch.nn.Module()
    fresh.head = TreeHead(8, tree, 10)
    load_weights(fresh, tmp_path / "old.safetensors")
    assert torch.equal(fresh.head.nodes.weight, head.nodes.weight)
