"""Step 2 at many classes (issue 18): condensed distances, float32 tiles, sparse top-k L1, the
distances file beside hierarchy.json, old run folders that kept distances in the JSON, and heads
without (B, K, C) temporaries."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from ccn.errors import CCNError
from ccn.heads import ThreeLevelHead, within_group_log_probs
from ccn.hierarchy import Hierarchy, agreement, build_hierarchy
from ccn.hierarchy.affinity import METRICS, condensed_distances, sparse_l1_condensed, tiled_condensed
from ccn.hierarchy.clustering import distance_block, learned_partition
from ccn.hierarchy.tree import read_distances, save_distances
from ccn.runfiles import DISTANCES_FILE

from conftest import run_cli


def planted(num_classes: int, groups: int, seed: int = 0, outside: float = 0.02) -> tuple[np.ndarray, list[int]]:
    """Profiles whose rows put 0.5 + U(0, 1) on each class of their group and `outside` x U(0, 1) elsewhere."""
    rng = np.random.default_rng(seed)
    group_of = rng.permutation(num_classes) % groups
    S = outside * rng.random((num_classes, num_classes))
    same = group_of[:, None] == group_of[None, :]
    S[same] += 0.5 + rng.random(int(same.sum()))
    return S / S.sum(1, keepdims=True), group_of.tolist()


def names(num_classes: int) -> list[str]:
    return [f"c{i}" for i in range(num_classes)]


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine", "js"])
def test_tiles_give_the_condensed_distances_of_the_whole_matrix(metric):
    """The tiling a GPU uses, run on the CPU with tiles far smaller than the matrix, gives scipy's (or,
    for js, the C x C x C formula's) distances."""
    S = np.random.default_rng(1).dirichlet(np.full(37, 0.3), size=37)
    tile, scipy_name, cubic = METRICS[metric]
    tiled = tiled_condensed(torch.tensor(S, dtype=torch.float32), tile, cubic, tile_bytes=2000)
    if scipy_name is not None:
        expected = pdist(S, scipy_name)
    else:
        p = torch.tensor(S).clamp_min(1e-12)
        m = (p[:, None] + p[None]) / 2
        plogp = (p * p.log()).sum(1)
        expected = squareform(((plogp[:, None] + plogp[None]) / 2 - (m * m.log()).sum(2)).clamp_min(0).numpy(), checks=False)
    assert tiled.dtype == np.float32 and tiled.shape == expected.shape
    assert np.allclose(tiled, expected, atol=2e-6)


def test_js_tiles_stay_within_their_memory_bound():
    """The js metric never allocates C^3: each tile's (rows, cols, C) mixture fits tile_bytes."""
    C, budget, seen = 50, 50 * 4 * 20, []

    def recording(a, b):
        seen.append(len(a) * len(b) * C * 4)
        return METRICS["js"][0](a, b)

    S = torch.tensor(np.random.default_rng(2).dirichlet(np.ones(C), size=C), dtype=torch.float32)
    tiled_condensed(S, recording, cubic=True, tile_bytes=budget)
    assert max(seen) <= budget < C ** 3 * 4


def test_float32_distances_give_the_groups_of_float64():
    S, planted_groups = planted(240, 15, outside=0.2)
    exact = learned_partition(pdist(S, "cityblock"), 15)[0]
    single = tiled_condensed(torch.tensor(S, dtype=torch.float32), METRICS["l1"][0])
    assert learned_partition(single, 15)[0] == exact
    assert agreement(exact, planted_groups, 240)["ari"] == pytest.approx(1.0)


def test_sparse_l1_is_exact_with_every_entry_and_the_truncated_l1_otherwise():
    S = np.random.default_rng(3).dirichlet(np.full(60, 0.2), size=60)
    D, dropped = sparse_l1_condensed(torch.tensor(S), 60)
    assert np.allclose(D, pdist(S, "cityblock"), atol=1e-6) and np.allclose(dropped, 0, atol=1e-6)
    k = 7  # by hand: keep each row's 7 largest entries, put the rest of its mass in one extra coordinate
    kept = np.zeros((60, 61))
    for i, row in enumerate(S.astype(np.float32)):
        top = np.argsort(-row)[:k]
        kept[i, top] = row[top]
        kept[i, 60] = row.sum() - row[top].sum()
    D, dropped = sparse_l1_condensed(torch.tensor(S), k)
    assert np.allclose(D, pdist(kept, "cityblock"), atol=1e-5)
    assert np.allclose(dropped, kept[:, 60], atol=1e-6)


def test_many_classes_use_sparse_profiles_record_the_dropped_mass_and_recover_planted_groups():
    S, planted_groups = planted(400, 20)
    h = build_hierarchy(S, names(400), num_groups=20, sparse_above=300)
    assert h.how["distances"] == "sparse top-256 L1" and h.how["top_k"] == 256
    assert 0 < h.how["dropped_mass"]["mean"] <= h.how["dropped_mass"]["max"] < 1
    assert agreement(h.groups, planted_groups, 400)["ari"] == pytest.approx(1.0)
    assert build_hierarchy(S, names(400), num_groups=20, sparse_above=300, top_k=64).how["top_k"] == 64
    assert "top_k" not in build_hierarchy(S, names(400), num_groups=20).how  # at most sparse_above classes: dense


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_many_profiles_on_cuda_are_tiled_there_and_give_the_cpu_groups():
    S, planted_groups = planted(400, 20)
    on_gpu = build_hierarchy(torch.tensor(S, device="cuda"), names(400), num_groups=20, sparse_above=300)
    assert on_gpu.how["distances"] == "dense, float32 tiles on cuda"
    assert on_gpu.groups == build_hierarchy(S, names(400), num_groups=20).groups  # the CPU's dense float64
    assert agreement(on_gpu.groups, planted_groups, 400)["ari"] == pytest.approx(1.0)


def test_distance_blocks_read_from_condensed_match_the_square_matrix():
    D = pdist(np.random.default_rng(4).random((9, 3)))
    rows, cols = [4, 0, 8], [8, 4, 1, 0]
    assert np.allclose(distance_block(D, rows, cols), squareform(D)[np.ix_(rows, cols)])


def test_hierarchy_json_keeps_groups_and_merges_but_not_distances(tmp_path):
    S, _ = planted(1000, 32)
    h = build_hierarchy(S, names(1000))
    h.save(tmp_path / "hierarchy.json")
    saved = json.loads((tmp_path / "hierarchy.json").read_text())
    assert "distances" not in saved and len(saved["merges"]) == 999
    assert (tmp_path / "hierarchy.json").stat().st_size < 1_000_000  # ~1.1 MB at 10,000 classes (RESULTS.md)
    save_distances(tmp_path / DISTANCES_FILE, h.distances)
    back = Hierarchy.load(tmp_path / "hierarchy.json")
    assert back.distances is None and back.groups == h.groups
    assert np.array_equal(back.with_distances(tmp_path).distances, h.distances)


@pytest.mark.parametrize("damage, words", [
    (None, "is missing"),
    (b"\x93NUMPY garbage", "is not a readable .npy array"),
    (np.zeros(5, dtype=np.float32), "not the 15 distances of 6 classes"),
    (np.array([{"x": 1}] * 15, dtype=object), "is not a readable .npy array"),  # pickled objects are refused
    (np.full(15, -1.0, dtype=np.float32), "negative or non-finite distances"),
], ids=["missing", "garbage", "wrong-length", "pickled", "negative"])
def test_a_damaged_distances_file_is_one_line(tmp_path, damage, words):
    path = tmp_path / DISTANCES_FILE
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    elif damage is not None:
        np.save(path, damage, allow_pickle=True)
    with pytest.raises(CCNError) as err:
        read_distances(path, 6)
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, words", [
    (["method.top_k=64", "method.metric=cosine"], "method.top_k is for method.metric=l1 only"),
    (["method.top_k=10", "method.max_group_size=8"], "method.top_k=10 is below twice method.max_group_size=8"),
    (["method.top_k=1"], "method.top_k must be between 2 and"),
    (["method.sparse_above=1"], "method.sparse_above must be between 2 and"),
], ids=["top-k-not-l1", "top-k-below-twice-max-group", "top-k-one", "sparse-above-one"])
def test_bad_sparse_settings(overrides, words):
    from ccn import config as cfgmod
    from ccn.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        cfgmod.load(None, overrides)


def test_old_hierarchy_json_with_asymmetric_distances_is_refused():
    S, _ = planted(6, 2)
    data = build_hierarchy(S, names(6), num_groups=2).to_json()
    data["distances"] = (np.arange(36.0).reshape(6, 6) * (1 - np.eye(6))).tolist()
    with pytest.raises(CCNError, match="'distances' must be a symmetric matrix"):
        Hierarchy.from_json(data, "h.json")


def _old_style(run_dir):
    """Make a run folder look like one written before distances.npy: the C x C lists in hierarchy.json."""
    data = json.loads((run_dir / "hierarchy.json").read_text())
    D = squareform(np.load(run_dir / DISTANCES_FILE).astype(np.float64))
    data["distances"] = np.round(D, 6).tolist()
    (run_dir / "hierarchy.json").write_text(json.dumps(data))
    (run_dir / DISTANCES_FILE).unlink()
    return D


def test_run_folders_written_before_distances_npy_still_load_plot_and_evaluate(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert np.load(run / DISTANCES_FILE).shape == (15,)  # 6 classes
    D = _old_style(run)
    h = Hierarchy.load(run / "hierarchy.json")
    assert np.allclose(squareform(h.distances), D, atol=1e-6)
    for args in (["clusters", str(run), "--plot"], ["evaluate", str(run)]):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    assert (run / "distances.png").stat().st_size > 0


def test_plot_without_its_distances_file_is_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / DISTANCES_FILE).unlink()
    result = run_cli("clusters", str(run), "--plot")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "distances.npy is missing" in result.stderr


def test_an_old_checkpoint_hierarchy_with_distances_is_read_back():
    """Checkpoints of older runs held hierarchy.to_json() with the distances: resume reads them."""
    S, _ = planted(8, 2)
    h = build_hierarchy(S, names(8), num_groups=2)
    old = {**h.to_json(), "distances": np.round(squareform(h.distances.astype(np.float64)), 6).tolist()}
    back = Hierarchy.from_json(old, "the hierarchy in checkpoint x")
    assert back.groups == h.groups and np.allclose(back.distances, h.distances, atol=1e-6)
    assert "distances" not in h.to_json()  # what checkpoints hold now


def test_within_group_log_probs_match_the_masked_log_sum_exp_and_never_build_b_k_c():
    groups = [[0, 3, 5], [1], [2, 4, 6, 7]]
    head = ThreeLevelHead(4, groups)
    v = torch.randn(5, 8, requires_grad=True)
    got = within_group_log_probs(v, head.group_of, 3)
    masked = v.unsqueeze(1).masked_fill(~head.mask, float("-inf"))  # the (B, K, C) reference
    assert torch.allclose(got, v - torch.logsumexp(masked, dim=2)[:, head.group_of], atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_three_level_head_at_10000_classes_allocates_nothing_class_by_class():
    """Loss and every inference rule at 10,000 classes in 100 groups: no temporary reaches C x C
    (or B x K x C) elements; the largest are the (K, C) mask and the (C, features) weights."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.biggest = max(Largest.biggest, t.numel())
            return out

    C, K, B = 10_000, 100, 8
    head = ThreeLevelHead(16, [list(range(k, C, K)) for k in range(K)])
    h, y = torch.randn(B, 16), torch.randint(0, C, (B,))
    with Largest():
        out = head(h)
        head.loss(out, y)["loss"].backward()
        for rule in head.rules:
            head.scores(out, rule)
    assert Largest.biggest <= K * C < C * C // 10


@pytest.mark.slow
def test_ccn_train_on_10000_synthetic_classes(tmp_path):
    """End to end at 10,000 classes on the CPU: tiny images, one image per class and a tiny network,
    so the cost is the class count itself (heads, profiles, step 2, scoring, the run's files)."""
    out = tmp_path / "run"
    result = run_cli("train", "--out", str(out), *[f"--set={s}" for s in (
        "data.name=synthetic", "data.num_classes=10000", "data.num_groups=100", "data.train_per_class=1",
        "data.test_per_class=1", "data.image_size=8", "model.width=4", "train.epochs=2", "train.batch_size=500",
        "train.progress=false")])
    assert result.returncode == 0, result.stderr[-3000:]
    h = json.loads((out / "hierarchy.json").read_text())
    assert len(h["classes"]) == 10_000 and len(h["groups"]) == 100 and "distances" not in h
    assert h["how"]["distances"].startswith("sparse top-") and (out / "hierarchy.json").stat().st_size < 10_000_000
    assert read_distances(out / DISTANCES_FILE, 10_000).shape == (10_000 * 9_999 // 2,)
    assert json.loads((out / "results.json").read_text())["num_classes"] == 10_000


def test_tree_head_greedy_descent_needs_no_nodes_by_edges_matrix():
    """The hard rule's descent compares each row's current node with the edges' parents (B x E), and
    picks what the former (nodes x edges) lookup picked."""
    from torch.nn import functional as F

    from ccn.heads import TreeHead

    torch.manual_seed(0)
    head = TreeHead(8, [[[0, 3], [5]], [1, 2], [4, [6, 7]]], 8)
    t = head(torch.randn(6, 8))["t"]
    children_of = head.edge_parent[None, :] == torch.arange(head.num_nodes)[:, None]
    picked, current = torch.zeros_like(t, dtype=torch.bool), torch.zeros(6, dtype=torch.long)
    for _ in range(head.height):
        children = children_of[current.clamp(min=0)] & (current >= 0)[:, None]
        best = t.masked_fill(~children, float("-inf")).argmax(dim=1)
        has = children.any(dim=1)
        picked = picked | (F.one_hot(best, t.shape[1]).bool() & has[:, None])
        current = torch.where(has, best + 1, torch.full_like(current, -1))
    assert torch.equal(head._greedy_path(t), picked) and picked.any(1).all()
