"""The `ccn` command: train, clusters, evaluate, predict, export, experiment.

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
from ccn.validate import printable  # every name and path printed as text (no torch: the import stays light)

EXIT_USAGE = 2


def _train(args) -> None:
    from ccn import config as cfgmod

    # what the command line and the config file get wrong is said before torch is imported (seconds)
    if args.resume and (args.config or args.set or args.out or args.force):
        raise CCNError("--resume continues a run with its own config.yaml: drop --config, --set, --out and --force")
    config = None if args.resume else cfgmod.load(args.config, args.set)

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
    from ccn.hierarchy import Hierarchy, leaves
    from ccn.plots import dendrogram_png, heatmap_png
    from ccn.runs import check_hierarchy_file_matches_weights

    path = Path(args.run_dir) / "hierarchy.json"
    if not os.path.lexists(path):  # a FIFO or folder there is named as what it is by Hierarchy.load
        raise CCNError(f"{args.run_dir} has no hierarchy.json: only runs with method.name=ccn form groups")
    h = Hierarchy.load(path)
    check_hierarchy_file_matches_weights(Path(args.run_dir), h)
    how = h.how
    print(f"{len(h.groups)} {how.get('partition', 'learned')} groups of {h.num_classes} classes "
          f"(metric {how.get('metric', '-')}, linkage {how.get('linkage', '-')}, after epoch {how.get('epoch', '?')}, "
          f"depth {h.depth})")
    for k, node in enumerate(h.tree):
        names = [printable(h.classes[c]) for c in sorted(leaves(node))]  # a name must not print a line of its own
        print(f"  group {k + 1:>2} ({len(names)}): {', '.join(names)}")
        if isinstance(node, list) and any(isinstance(child, list) for child in node):
            for child in node:
                print(f"      - {', '.join(printable(h.classes[c]) for c in leaves(child))}")
    if "coarse_ari" in how:
        print(f"agreement with the data set's coarse labels: ARI {how['coarse_ari']:.3f}, NMI {how['coarse_nmi']:.3f}")
    if args.plot:
        out = Path(args.run_dir)
        for made in (dendrogram_png(h, out / "dendrogram.png"), heatmap_png(h.with_distances(out), out / "distances.png")):
            print(f"wrote {made}")


def _evaluate(args) -> None:
    from ccn.dist import autocast, resolve_device
    from ccn.evaluate import score
    from ccn.data.prepare import check_saved_image_side, prepare_data
    from ccn.runs import check_same_classes, check_same_eval_set, load_run

    config, model, hierarchy, saved = load_run(Path(args.run_dir), args.set)
    device = resolve_device(config.device)
    data = prepare_data(config, device, preprocess=saved["preprocess"])
    check_same_classes(saved, data.ds.classes, data.ds.name)
    check_saved_image_side(data.ds, saved["preprocess"])
    check_same_eval_set(Path(args.run_dir), saved, data.eval_set)
    model.to(device)
    result = score(model, data.test, hierarchy.mask() if hierarchy is not None else None, config.method.inference,
                   lambda: autocast(device, config.train.bf16), config.train.tta)
    result.pop("per_group_top1", None)
    # which images were scored (the test set, or the run's validation split) and over which test-time views
    print(json.dumps({"data": data.ds.name, "eval_set": data.eval_set, "test_images": len(data.test.labels),
                      "tta": config.train.tta, **result}, indent=2))


def _predict(args) -> None:
    from ccn.predict import format_predictions, predict_images
    from ccn.runs import load_run

    config, model, hierarchy, saved = load_run(Path(args.run_dir))
    predictions = predict_images(model, hierarchy, saved, config.method.inference, args.images, args.top,
                                 config.train.tta)
    print(json.dumps(predictions, indent=2) if args.json else "\n".join(format_predictions(predictions)))


def _export(args) -> None:
    from ccn.export import export_run, sidecar_path

    info = export_run(Path(args.run_dir), Path(args.out), args.format, args.force)
    print(f"wrote {printable(args.out)} ({info['rule']} rule, {len(info['classes'])} classes, {info['image_size']}px "
          f"input) and {printable(sidecar_path(Path(args.out)))}")


def _experiment(args) -> None:
    from ccn.experiment import load_grid, run_grid
    from ccn.progress import set_enabled

    grid = load_grid(args.config, args.set)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccn", description="Clustering and Classification Networks")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a flat baseline or a CCN run")
    train.add_argument("--config", help="YAML file with data:, model:, train:, method: sections")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key (repeatable)")
    train.add_argument("--out", help="run folder (default: runs/<data>-<model>-<method>-s<seed>-<time>)")
    train.add_argument("--force", action="store_true", help="replace the run files in an existing --out")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.set_defaults(func=_train)
    clusters = sub.add_parser("clusters", help="print the groups of a run; --plot writes figures")
    clusters.add_argument("run_dir")
    clusters.add_argument("--plot", action="store_true", help="write dendrogram.png and distances.png")
    clusters.set_defaults(func=_clusters)
    evaluate = sub.add_parser("evaluate", help="re-score a saved run (optionally on other data)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="where the data are, how fast, or how to read the outputs (data.root, data.store, "
                          "data.workers, data.cache, device, train.eval_batch_size, train.progress, train.tta, "
                          "method.inference); the run is otherwise scored as it trained")
    evaluate.set_defaults(func=_evaluate)
    predict = sub.add_parser("predict", help="top classes, with their group, for image files")
    predict.add_argument("run_dir")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top", type=int, default=3)
    predict.add_argument("--json", action="store_true",
                         help='print [{"path", "top": [{"class", "probability" (0-1), "group"}]}] instead of text')
    predict.set_defaults(func=_predict)
    export = sub.add_parser("export", help="a run as an ONNX model: normalised images in, class probabilities out")
    export.add_argument("run_dir")
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--out", required=True, metavar="FILE", help="model file; FILE.json gets size, mean, std, classes")
    export.add_argument("--force", action="store_true", help="replace FILE and FILE.json if they exist")
    export.set_defaults(func=_export)
    experiment = sub.add_parser("experiment", help="variants x seeds with paired statistics and a report")
    experiment.add_argument("--config", required=True, help="grid YAML with base:, variants:, seeds:")
    experiment.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a base key, or seeds=[...] / reference=NAME")
    experiment.add_argument("--out", help="experiment folder (default: experiments/<grid name>); rerun to continue")
    experiment.set_defaults(func=_experiment)
    return parser


PATH_ARGUMENTS = {"config": "--config", "out": "--out", "resume": "--resume", "run_dir": "run folder",
                  "images": "image"}


def _check_paths(args) -> None:
    """Every path on the command line could name a file (config values are checked in ccn.config)."""
    from ccn.validate import check_path

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
