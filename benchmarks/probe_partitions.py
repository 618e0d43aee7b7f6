"""The partitions each step-2 setting gives after one probe epoch, on real data (issue 10).

    python benchmarks/probe_partitions.py --root ../shared/data/caltech101 --seeds 0 1 --out docs/results/caltech101-partitions.json

One flat epoch of the CPU recipe (configs/caltech101_cpu.yaml) per seed, then the profiles are
grouped into K=10 groups with every combination of `method.profile` (softmax, prior) and
`method.clustering` (agglomerative, balanced). Writes group sizes, the groups (class names) and the
ARI between the seeds' partitions per setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from ccn import config as cfgmod
from ccn.dist import World
from ccn.hierarchy import agreement, build_hierarchy
from ccn.evaluate import batch_outputs
from ccn.hierarchy.profiles import flat_profiles
from ccn.pipeline import MethodRun
from ccn.recipes import PACKAGED
from ccn.tracking import RunLog

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(p, c) for p in ("softmax", "prior") for c in ("agglomerative", "balanced")]


def probe(root: str, seed: int, groups: int) -> dict:
    config = cfgmod.load(PACKAGED / "caltech101_cpu.yaml",
                         ["method.name=flat", f"seed={seed}", f"data.root={root}", "train.progress=false"])
    run = MethodRun(config, None, RunLog(None, enabled=False), World(), None)
    tick = time.perf_counter()
    run.trainer.train_epoch(run.data.train, 1)
    profiles = flat_profiles(batch_outputs(run.model, run.data.probe), run.ds.num_classes)
    result = {"probe_epoch_s": round(time.perf_counter() - tick, 1)}
    for profile, clustering in SETTINGS:
        h = build_hierarchy(profiles, run.ds.classes, num_groups=groups, profile=profile, clustering=clustering)
        result[f"{profile}-{clustering}"] = {"sizes": sorted(map(len, h.groups), reverse=True), "groups": h.groups,
                                             "named": h.named_groups()}
    result["classes"] = run.ds.classes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "caltech101"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = {seed: probe(args.root, seed, args.groups) for seed in args.seeds}
    num_classes = len(next(iter(runs.values()))["classes"])
    summary = {}
    for profile, clustering in SETTINGS:
        key = f"{profile}-{clustering}"
        pairs = [agreement(runs[a][key]["groups"], runs[b][key]["groups"], num_classes)["ari"]
                 for a, b in itertools.combinations(args.seeds, 2)]
        summary[key] = {"sizes": {s: runs[s][key]["sizes"] for s in args.seeds}, "seed_ari": pairs}
    facts = {"data": "caltech101 (32 px, train.txt/test.txt)", "recipe": "configs/caltech101_cpu.yaml, 1 flat epoch",
             "groups": args.groups, "seeds": args.seeds, "torch": torch.__version__,
             "machine": f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads)",
             "date": time.strftime("%Y-%m-%d")}
    groups = {key: runs[args.seeds[0]][key]["named"] for key in summary}
    Path(args.out).write_text(json.dumps({"facts": facts, "summary": summary, "groups_seed0": groups}, indent=1))
    for key, entry in summary.items():
        print(f"{key:24s} sizes {entry['sizes']}  seed ARI {[round(a, 2) for a in entry['seed_ari']]}")


if __name__ == "__main__":
    main()
