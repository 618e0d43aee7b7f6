"""The `ccn` command: train, clusters, wordnet, evaluate, predict, export, experiment.

Every problem a user can fix ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from ccn.errors import CCNError, WriteError
from ccn.file_checks import printable  # every name and path printed as text (no torch: the import stays light)

EXIT_USAGE = 2


def _train(args) -> None:
    from ccn import config as cfgmod

    # what the command line and the config file get wrong is said before torch is imported (seconds)
    if args.resume and (args.config or args.set or args.out or args.force):
        raise CCNError("--resume continues a run with its own config.yaml: drop --config, --set, --out and --force")
    from ccn.recipes import resolve

    config = None if args.resume else cfgmod.load(resolve(args.config, "config"), args.set)

    from ccn.dist import world_from_env
    from ccn.runs import NewRun, default_run_dir, resume_run_dir, resumed_run

    world = world_from_env()
    if args.resume:
        out = Path(args.resume)
        with resumed_run(out) if world.is_main else nullcontext(resume_run_dir(out, clean=False)) as config:
            if config is None:
                print(f"{printable(out)} has already finished (results.json is there): nothing to resume")
                return
            _run(config, out, world, resume=True)
    else:
        if world.world_size > 1 and not args.out:
            raise CCNError("under torchrun every process must write to one folder: pass --out DIR")
        out = Path(args.out) if args.out else default_run_dir(config)
        # only rank 0 locks, checks and writes the folder; config.yaml is written (and with --force the old
        # run removed) once the data and model have loaded, so a failed start leaves the folder as it was
        with NewRun(out, force=args.force) if world.is_main else nullcontext() as run:
            _run(config, out, world, resume=False, on_start=(lambda: run.start(config)) if run else None)
    if world.is_main:
        print(f"run folder: {printable(out)}")


def _run(config, out: Path, world, resume: bool, on_start=None) -> None:
    from ccn.dist import shutdown_distributed
    from ccn.pipeline import run_training
    from ccn.progress import set_enabled
    from ccn.tracking import RunLog

    set_enabled(config.train.progress and world.is_main)  # also the bar of decoding an image folder
    try:
        run_training(config, out, RunLog(out, enabled=world.is_main), world=world, resume=resume, on_start=on_start)
    except WriteError as err:
        if (out / "config.yaml").is_file():  # the run had started: its last checkpoint can be continued
            raise WriteError(f"{err}; then continue with `ccn train --resume {out}`") from None
        raise
    finally:
        shutdown_distributed()
    if not world.is_main:
        _leave_without_teardown()


def _leave_without_teardown() -> None:
    """A torchrun rank other than 0 that finished its run ends here, skipping the interpreter's teardown: in
    about 1 two-rank CPU run in 15 a C++ thread left over from gloo aborted that teardown (SIGABRT,
    "terminate called without an active exception") after the run had finished, and torchrun reported the
    run as failed; a barrier before leaving the group did not prevent it. Such a rank has written nothing
    (rank 0 writes the run folder), so only its standard streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _clusters(args) -> None:
    from ccn.hierarchy import Hierarchy
    from ccn.plots import dendrogram_png, heatmap_png
    from ccn.runs import check_hierarchy_file_matches_weights

    given = Path(args.run_dir)
    if os.path.lexists(given) and not given.is_dir():  # a hierarchy file (ccn wordnet --out, hierarchy.json, a groups file)
        if args.plot:
            raise CCNError(f"--plot draws a run's class distances: give the run folder, not the file {given}")
        _print_groups(Hierarchy.load(given))
        return
    path = given / "hierarchy.json"
    if not os.path.lexists(path):  # a FIFO or folder there is named as what it is by Hierarchy.load
        raise CCNError(f"{args.run_dir} has no hierarchy.json: only runs with method.name=ccn form groups")
    h = Hierarchy.load(path)
    check_hierarchy_file_matches_weights(given, h)
    _print_groups(h)
    if args.plot:
        out = given
        for made in (dendrogram_png(h, out / "dendrogram.png"), heatmap_png(h.with_distances(out), out / "distances.png")):
            print(f"wrote {made}")


def _print_groups(h) -> None:
    """The groups of a Hierarchy, one line each (with their names where it has them), sub-groups below."""
    from ccn.hierarchy import leaves

    how = h.how
    if how.get("partition") == "wordnet":
        print(f"{len(h.groups)} wordnet groups of {h.num_classes} classes (balanced cut of WordNet's hypernym tree, "
              f"depth {h.depth})")
    else:
        print(f"{len(h.groups)} {how.get('partition', 'learned')} groups of {h.num_classes} classes "
              f"(metric {how.get('metric', '-')}, linkage {how.get('linkage', '-')}, after epoch {how.get('epoch', '?')}, "
              f"depth {h.depth})")
    names = how.get("group_names")
    names = names if isinstance(names, list) and len(names) == len(h.tree) else None
    for k, node in enumerate(h.tree):
        members = [printable(h.classes[c]) for c in sorted(leaves(node))]  # a name must not print a line of its own
        label = f" {printable(names[k])}" if names else ""
        print(f"  group {k + 1:>2}{label} ({len(members)}): {', '.join(members)}")
        if isinstance(node, list) and any(isinstance(child, list) for child in node):
            for child in node:
                print(f"      - {', '.join(printable(h.classes[c]) for c in leaves(child))}")
    if "shape" in how:
        print(f"shape: {how['shape']}")
    if "coarse_ari" in how:
        chance = how.get("coarse_random")
        beside = (f" (random groups of the same sizes: ARI {chance['ari_mean']:.3f}, NMI {chance['nmi_mean']:.3f})"
                  if isinstance(chance, dict) and {"ari_mean", "nmi_mean"} <= chance.keys() else "")
        print(f"agreement with the data set's coarse labels: ARI {how['coarse_ari']:.3f}, "
              f"NMI {how['coarse_nmi']:.3f}{beside}")


def _wordnet(args) -> None:
    from ccn import config as cfgmod
    from ccn.errors import ConfigError

    config = cfgmod.load(args.config, args.set)
    if config.data.wordnet is None:
        raise ConfigError("ccn wordnet needs data.wordnet=FOLDER (the folder of WordNet 3.0's data.noun): add it "
                          "to the config or pass --set data.wordnet=FOLDER")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:  # said before the data set is read (minutes)
        raise CCNError(f"--out {out} exists: choose another file, or pass --force to replace it")

    from ccn.data import load_dataset
    from ccn.data.wordnet import wordnet_groups_of
    from ccn.files import atomic_write
    from ccn.hierarchy import Hierarchy

    ds = load_dataset(config.data)
    tree, names, choices = wordnet_groups_of(ds, config.data.wordnet, config.data.wordnet_groups)
    h = Hierarchy(ds.classes, tree, {"partition": "wordnet", "num_groups": len(tree), "group_names": names,
                                     "wordnet": str(config.data.wordnet)})
    _print_groups(h)
    if choices:
        print(f"the first listed hypernym was taken at {len(choices)} synset(s) with several: {'; '.join(choices)}")
    if out is not None:
        text = json.dumps(h.to_json(), indent=1)
        atomic_write(out, lambda tmp: tmp.write_text(text))
        print(f"wrote {out}: use it with method.partition=file method.groups_file={out} (method.depth=2 for its "
              "sub-groups), or show it with ccn clusters")


def _evaluate(args) -> None:
    from ccn.data import load_dataset
    from ccn.dist import autocast, resolve_device
    from ccn.evaluate import score
    from ccn.data.prepare import check_saved_image_side, prepare_data
    from ccn.plan import DataFacts, resolve
    from ccn.runs import check_same_classes, check_same_eval_set, load_run

    config, model, hierarchy, saved = load_run(Path(args.run_dir), args.set)
    device = resolve_device(config.device)
    ds = load_dataset(config.data)
    check_same_classes(saved, ds.classes, ds.name)  # other data (--set data.root) is named as such first
    check_saved_image_side(ds, saved["preprocess"])
    plan = resolve(config, DataFacts.of(ds))  # --set train.tta=mirror on data never flipped stops here
    data = prepare_data(plan, device, ds=ds, preprocess=saved["preprocess"])
    check_same_eval_set(Path(args.run_dir), saved, data.eval_set)
    model.to(device)
    result = score(model, data.test, hierarchy.mask() if hierarchy is not None else None, plan.inference,
                   lambda: autocast(device, config.train.bf16), plan.tta)
    result.pop("per_group_top1", None)
    # which images were scored (the test set, or the run's validation split) and over which test-time views
    print(json.dumps({"data": data.ds.name, "eval_set": data.eval_set, "test_images": len(data.test.labels),
                      "tta": plan.tta, **result}, indent=2))


def _predict(args) -> None:
    from ccn.predict import format_prediction, image_paths, iter_predictions
    from ccn.runs import load_run

    config, model, hierarchy, saved = load_run(Path(args.run_dir))
    paths = image_paths(args.images)  # every name is checked before the first line is printed
    for entry in iter_predictions(model, hierarchy, saved, config.method.inference, paths, args.top,
                                  config.train.tta, args.batch_size):
        # printed as each batch is scored: a reader (`| head`, a JSON Lines consumer) sees results as they come
        print(json.dumps(entry) if args.json else format_prediction(entry), flush=True)


def _export(args) -> None:
    from ccn.export import export_run, sidecar_path

    info = export_run(Path(args.run_dir), Path(args.out), args.format, args.force)
    print(f"wrote {printable(args.out)} ({info['rule']} rule, {len(info['classes'])} classes, {info['image_size']}px "
          f"input) and {printable(sidecar_path(Path(args.out)))}")


def _experiment(args) -> None:
    from ccn.grid import load_grid
    from ccn.progress import set_enabled
    from ccn.recipes import resolve

    grid = load_grid(resolve(args.config, "grid"), args.set)  # a bad grid is refused before torch is imported
    from ccn.experiment import run_grid
    set_enabled(grid.config_for(grid.reference, grid.seeds[0]).train.progress)
    out = Path(args.out) if args.out else Path("experiments") / grid.name
    try:
        summary = run_grid(grid, out)
    except WriteError as err:  # finished runs are kept: the same command continues the grid
        raise WriteError(f"{err}; then run the same command again to continue the grid") from None
    for name, p in summary["paired"].items():
        ci = p["ci95"]
        interval = f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "(one seed)"
        print(f"{name} vs {summary['reference']}: {100 * p['diff_mean']:+.2f} points {interval}: {p['verdict']}")
    for skipped in summary["not_comparable"]:
        print(f"{skipped['compare'][0]} vs {skipped['compare'][1]}: not comparable ({skipped['why']})")
    print(f"report: {out / 'report.md'}")


def _configs(args) -> None:
    from ccn.recipes import listing, show

    if args.name:
        print(show(args.name), end="")  # the file as it is, to redirect into a file of your own
    else:
        print("\n".join(listing()))


def version_text() -> str:
    """`ccn --version`: ccn's version and the torch it runs on (read from the installed metadata, so
    that --version answers without importing torch)."""
    from importlib.metadata import PackageNotFoundError, version
    import platform

    from ccn import __version__

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"ccn {__version__} (torch {torch}, Python {platform.python_version()})"


RUN_DIR_HELP = "a run folder (the --out of a finished `ccn train`)"
CONFIG_HELP = ("a YAML file, or the name of a packaged {what} (`ccn configs` lists them; a path that exists "
               "wins over a name)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccn", description="Clustering and Classification Networks")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print ccn's version and the torch it runs on, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a flat baseline or a CCN run")
    train.add_argument("--config", help=CONFIG_HELP.format(what="run config, e.g. cifar10_cpu_10min")
                       + "; sections data:, model:, train:, method:; default: the digits recipe")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key (repeatable)")
    train.add_argument("--out", help="run folder (default: runs/<data>-<model>-<method>-s<seed>-<time>)")
    train.add_argument("--force", action="store_true", help="replace the run files in an existing --out")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.set_defaults(func=_train)
    clusters = sub.add_parser("clusters", help="print the groups of a run (or a hierarchy file); --plot writes figures")
    clusters.add_argument("run_dir", help="a run folder, or a hierarchy.json file (such as ccn wordnet --out writes)")
    clusters.add_argument("--plot", action="store_true", help="write dendrogram.png and distances.png")
    clusters.set_defaults(func=_clusters)
    wordnet = sub.add_parser("wordnet", help="the WordNet groups (data.wordnet) of a data set whose class ids are "
                             "WordNet ids; --out writes them as a groups file")
    wordnet.add_argument("--config", help="YAML file with a data: section (data.wordnet=FOLDER of data.noun)")
    wordnet.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key (repeatable)")
    wordnet.add_argument("--out", metavar="FILE", help="write the groups and sub-groups as a hierarchy.json file "
                         "for method.partition=file")
    wordnet.add_argument("--force", action="store_true", help="replace FILE if it exists")
    wordnet.set_defaults(func=_wordnet)
    evaluate = sub.add_parser("evaluate", help="re-score a saved run (optionally on other data)")
    evaluate.add_argument("run_dir", help=RUN_DIR_HELP)
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="where the data are, how fast, or how to read the outputs (data.root, data.store, "
                          "data.workers, data.worker_timeout, data.cache, data.wordnet, device, train.eval_batch_size, "
                          "train.progress, train.tta, method.inference); the run is otherwise scored as it trained")
    evaluate.set_defaults(func=_evaluate)
    predict = sub.add_parser("predict", help="top classes, with their group, for image files, folders or glob patterns")
    predict.add_argument("run_dir", help=RUN_DIR_HELP)
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help="image files, folders (every image file below them, sorted) or quoted glob patterns "
                         "such as 'photos/**/*.jpg' (expanded by ccn)")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="how many classes to print per image "
                         "(default 3)")
    # the default is ccn.predict.DEFAULT_BATCH, written out: the parser imports no torch
    predict.add_argument("--batch-size", type=int, default=64, metavar="N",
                         help="images decoded and scored at a time (default 64); memory does not grow with the "
                         "number of images")
    predict.add_argument("--json", action="store_true",
                         help='print one JSON object per line (JSON Lines), {"path", "top": [{"class", '
                         '"probability" (0-1), "group" (1-based, null for flat runs)}]}, as each batch is scored')
    predict.set_defaults(func=_predict)
    export = sub.add_parser("export", help="a run as an ONNX model: normalised images in, class probabilities out")
    export.add_argument("run_dir", help=RUN_DIR_HELP)
    export.add_argument("--format", default="onnx", choices=["onnx"], help="the model format (only onnx for now)")
    export.add_argument("--out", required=True, metavar="FILE", help="model file; FILE.json gets size, mean, std, classes")
    export.add_argument("--force", action="store_true", help="replace FILE and FILE.json if they exist")
    export.set_defaults(func=_export)
    experiment = sub.add_parser("experiment", help="variants x seeds with paired statistics and a report")
    experiment.add_argument("--config", required=True, help=CONFIG_HELP.format(what="grid, e.g. digits_quick")
                            + "; sections base:, variants:, seeds:")
    experiment.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a base key, or seeds=[...] / reference=NAME")
    experiment.add_argument("--out", help="experiment folder (default: experiments/<grid name>); rerun to continue")
    experiment.set_defaults(func=_experiment)
    configs = sub.add_parser("configs", help="list the recipes packaged with ccn (run configs and grids)")
    configs.add_argument("name", nargs="?", help="print this recipe's YAML instead (to copy and edit)")
    configs.set_defaults(func=_configs)
    return parser


PATH_ARGUMENTS = {"config": "--config", "out": "--out", "resume": "--resume", "run_dir": "run folder",
                  "images": "image"}


def _check_paths(args) -> None:
    """Every path on the command line could name a file (config values are checked in ccn.config)."""
    from ccn.file_checks import check_path

    for name, what in PATH_ARGUMENTS.items():
        value = getattr(args, name, None)
        for path in value if isinstance(value, list) else [value]:
            if path is not None:
                check_path(path, what)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_paths(args)
        args.func(args)
        sys.stdout.flush()  # inside the try: a reader that has gone away is found here, not at exit
    except BrokenPipeError:  # `ccn predict ... | head -1`: the reader has all it wanted; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except CCNError as err:  # escaped: a name in the message must not break the one line or the terminal
        print(f"ccn: error: {printable(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ccn: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
