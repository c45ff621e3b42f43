"""The `numclip` command: one sub-command per pipeline step, plus `run` (the whole job) and `predict`.

Every sub-command reads params.yaml (or --params) and accepts `--set section.key=value` overrides.
User mistakes print one line naming what is wrong and exit 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from numclip.config import TASK_PRESETS, Params, load_params
from numclip.core.errors import NumclipError

BACKBONES = ("count-aware", "plain")


def common_options() -> argparse.ArgumentParser:
    """--params and --set, which every sub-command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set train.epochs=3 (repeatable)")
    return common


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The options that say what a protocol runs (`numclip protocol` and `python -m flows.sweep`)."""
    p.add_argument("--recipe", help="a recipe (recipes/*.yaml): the dataset's params, folds, seeds, methods "
                   "and published numbers; --set and the options below override it")
    p.add_argument("--name", help="the protocol's name (default: the recipe's, or 'protocol')")
    p.add_argument("--method", action="append", help="method (repeatable; default: the recipe's, or all)")
    p.add_argument("--folds", help="comma-separated folds, e.g. 0,1,2,3,4 (default: the recipe's, or none)")
    p.add_argument("--seeds", help="comma-separated training seeds (default: the recipe's, or 0)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis, e.g. --vary train.subset.shots=1,2,4 (values parsed as YAML)")
    p.add_argument("--backbone", help="reuse this pretrained backbone file instead of pretraining per fold")
    p.add_argument("--out", help="output folder (default: protocols/<name>)")
    p.add_argument("--faithful-test-selection", action="store_true",
                   help="choose checkpoints on the test split, as the released MORPH code did")
    p.add_argument("--plot", metavar="KEY", help="draw test MAE against this --vary key (PNG in --out)")


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(prog="numclip", description=__doc__.splitlines()[0])
    parser.add_argument("--warm", action="store_true", help="run in a fork of a process that has already "
                        "imported torch and open_clip (what dvc.yaml uses; docs/pipeline.md, Warm processes)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="look at your images (a folder, a table or a list file) and write the "
                       "params.yaml that runs them through `dvc repro`")
    p.add_argument("data", help="an image folder (<root>/<label>/ or <root>/<split>/<label>/), a CSV/Parquet "
                   "table (path,label[,split,...]) or an OrdinalCLIP list file")
    p.add_argument("--task", default="generic", choices=list(TASK_PRESETS),
                   help="what the ranks are: sets the rank words, prompt and NumCLIP concepts, and whether "
                   "the count-aware loss and the counting comparison apply (default: generic)")
    p.add_argument("--source", choices=["folder", "table", "listfile"], help="default: from the path")
    p.add_argument("--rank-words", help="comma-separated words naming ranks 0..K-1, e.g. zero,one,two")
    p.add_argument("--template", help="the zero-shot prompt with {} for the rank word, e.g. "
                   "'a photo of the digit {}.'")
    p.add_argument("--params", default="params.yaml", help="the params file to write (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="also set a param, e.g. --set pretrain.epochs=20 (repeatable)")
    p.add_argument("--keep-results", action="store_true",
                   help="keep the previous data's metrics, plots, models and dvc.lock")

    sub.add_parser("ingest", parents=[common], help="build the manifest (and rejects report) from data.*")
    backbone = argparse.ArgumentParser(add_help=False)
    backbone.add_argument("--backbone", choices=BACKBONES, default="count-aware",
                          help="plain: the counting comparison's baseline, pretrained with the plain CLIP "
                          "loss, with its outputs under plain_backbone.root; default: count-aware")
    sub.add_parser("pretrain", parents=[common, backbone],
                   help="give the backbone a language prior (or save real weights)")
    sub.add_parser("prototypes", parents=[common], help="cache the text prototypes of each method's initial prompts")
    for name, what, parents in (("train", "train a method (under torchrun: data-parallel)", [common, backbone]),
                                ("evaluate", "evaluate trained methods", [common])):
        p = sub.add_parser(name, parents=parents, help=what)
        p.add_argument("--method", action="append", help="method name from params 'methods' "
                       "(repeatable; default: all)")
    sub.choices["train"].add_argument(
        "--resume", nargs="?", const="explicit", default="never", choices=["explicit", "auto"],
        help="continue a killed run from its checkpoint in train.checkpoints_dir (refused if the params "
        "changed); '--resume auto' (the DVC stage) starts afresh instead when they changed")
    sub.add_parser("counting", parents=[common], help="zero-shot counting (CountBench-style) of the "
                   "count-aware and plain backbones, and the methods trained on each")
    compare = sub.add_parser("compare", parents=[common], help="comparison table of evaluated methods")
    compare.add_argument("--method", action="append", help="these methods only (repeatable; default: all)")
    run = sub.add_parser("run", parents=[common], help="every stage of dvc.yaml in order, without DVC's cache "
                         "(`dvc repro` is the usual way)")
    run.add_argument("--method", action="append", help="restrict to these methods (repeatable)")

    p = sub.add_parser("import", help="read a licensed dataset's own layout (morph, adience, hci, "
                       "aesthetics) into a table that data.source=table ingests")
    p.add_argument("dataset", help="morph | adience | hci | aesthetics")
    p.add_argument("root", help="the dataset folder you hold")
    p.add_argument("--out", help="the table to write (default: data/imports/<dataset>/<dataset>.csv)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="an importer option, e.g. --option label_offset=0 --option num_ranks=101")

    p = sub.add_parser("protocol", parents=[common], help="a protocol: folds x seeds x a params grid x "
                       "methods, each run in its own folder, aggregated into mean +- std")
    add_protocol_arguments(p)

    p = sub.add_parser("bench", parents=[common], help="micro-benchmarks of the fused kernels vs PyTorch")
    p.add_argument("--out", default="benchmarks/results", help="folder for the CSV and PNG")
    p.add_argument("--quick", action="store_true", default=None,
                   help="B in {256, 4096} only (the default on CPU; the full grid adds B = 65536)")
    p.add_argument("--full", dest="quick", action="store_false", help="the full grid, also on CPU")
    p.add_argument("--model", action="store_true", help="print the roofline model of the target cases (bytes, "
                   "FLOPs, estimated H100/H200 times: lower bounds, not measurements) and time nothing")
    p.add_argument("--step", action="store_true", help="time one training step and the head + loss's share of it "
                   "(ViT-B/16, batch 256 on CUDA; the tiny model on CPU)")

    p = sub.add_parser("predict", parents=[common], help="predict ranks for your own images")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or list files")
    p.add_argument("--model", required=True, help="a trained model file (models/<method>.safetensors)")
    p.add_argument("--head", help="exported head (artifacts/heads/<method>.safetensors): inference then never "
                   "runs the text encoder, and the CSV gets each image's calibrated interval (lo, hi)")
    p.add_argument("--out", default="predictions.csv", help="output CSV (default: predictions.csv)")
    p.add_argument("--groups-out", help="also write one prediction per folder of images (a person's photos, a "
                   "video's frames) to this CSV, pooled as evaluate.group_aggregate says")
    return parser


def _methods(params: Params, chosen: Optional[list[str]]) -> list[str]:
    names = chosen or list(params.methods)
    for name in names:
        params.method(name)
    return names


def cmd_ingest(params: Params) -> None:
    from numclip.stages.ingest import run_ingest

    print(run_ingest(params).summary())


def cmd_pretrain(params: Params) -> None:
    from numclip.stages.pretrain import pretrain

    pretrain(params)


def cmd_prototypes(params: Params) -> None:
    from numclip.stages.prototypes import compute_prototypes

    compute_prototypes(params)


def cmd_train(params: Params, methods: list[str], resume: str = "never") -> None:
    import torch.distributed as dist

    from numclip.stages.train import train

    try:
        for method in methods:
            train(params, method, resume=resume)
    finally:
        if dist.is_initialized():  # under torchrun
            dist.destroy_process_group()


def cmd_evaluate(params: Params, methods: list[str]) -> None:
    from numclip.stages.evaluate import evaluate

    for method in methods:
        evaluate(params, method)


def cmd_compare(params: Params, methods: list[str]) -> None:
    from numclip.stages.evaluate import compare

    print(compare(params, methods), end="")
    print(f"(written to {params.evaluate.comparison} and its .md)")


def cmd_counting(params: Params) -> None:
    from numclip.stages.counting import run_counting

    run_counting(params)


def cmd_import(args: argparse.Namespace) -> None:
    import yaml

    from numclip.importers import import_dataset

    options = {}
    for text in args.option:
        name, sep, value = text.partition("=")
        if not sep:
            raise NumclipError(f"--option '{text}' must look like name=value")
        options[name.strip()] = yaml.safe_load(value)
    out = args.out or f"data/imports/{args.dataset}/{args.dataset}.csv"
    report = import_dataset(args.dataset, args.root, out, **options)
    print(report.summary())
    print("use it with: " + " ".join(f"--set {k}={v}" for k, v in report.params().items()))


def cmd_init(args: argparse.Namespace) -> None:
    from numclip.commands.init import init_project

    words = [w.strip() for w in args.rank_words.split(",")] if args.rank_words else None
    report = init_project(args.data, args.task, args.source, words, args.template, args.params,
                          args.overrides, args.keep_results)
    print(report.summary())


def cmd_protocol(args: argparse.Namespace) -> None:
    from numclip.protocols.runner import protocol_from_args, run_protocol, save_protocol_curve

    params, protocol = protocol_from_args(args)
    result = run_protocol(params, protocol)
    if args.plot:
        print(f"curve -> {save_protocol_curve(result['runs'], args.plot, protocol)}")


def cmd_run(args: argparse.Namespace) -> None:
    from numclip.commands.run import run_pipeline

    common = ["--params", args.params, *(a for o in args.overrides for a in ("--set", o))]
    run_pipeline(main, common, args.method)
    if args.method:  # a restricted evaluate does not end with the comparison table
        main(["compare", *common, *(a for m in args.method for a in ("--method", m))])


def cmd_predict(params: Params, args: argparse.Namespace) -> None:
    """Stream images -> predictions -> CSV rows, so memory stays flat however many images there are."""
    from numclip.commands.predict import GroupPredictions, Predictor, iter_images, write_predictions
    from numclip.models.backbone import resolve_device

    predictor = Predictor(args.model, args.head, resolve_device(params.model.device))
    skipped: list = []
    predictions = predictor.iter_predict(iter_images(args.inputs, skipped), params.predict.batch_size)
    groups = GroupPredictions(predictor.model.num_ranks, params.evaluate.group_aggregate) if args.groups_out else None
    counts = write_predictions(predictions, args.out, len(predictor.model.card.prompt_words), groups)
    print(f"predicted {counts.predicted} images -> {args.out}")
    if groups is not None:
        print(f"pooled them into {groups.write(args.groups_out)} groups (one per folder) -> {args.groups_out}")
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        files = "1 file that is not an image" if len(skipped) == 1 else f"{len(skipped)} files that are not images"
        print(f"skipped {files} (by extension): {shown}", file=sys.stderr)
    if counts.failed:
        print(f"{counts.failed} images could not be read (rows with an 'error' column in {args.out}), "
              f"e.g. {counts.first_error}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "protocol":  # its params come from the recipe, then --set
            cmd_protocol(args)
            return 0
        if args.command == "import":  # reads no params
            cmd_import(args)
            return 0
        if args.command == "init":  # writes the params
            cmd_init(args)
            return 0
        params = load_params(args.params, args.overrides)
        if getattr(args, "backbone", None) == "plain":
            from numclip.config.paths import plain_twin

            params = plain_twin(params)
        if args.command == "ingest":
            cmd_ingest(params)
        elif args.command == "pretrain":
            cmd_pretrain(params)
        elif args.command == "prototypes":
            cmd_prototypes(params)
        elif args.command == "train":
            cmd_train(params, _methods(params, args.method), args.resume)
        elif args.command == "evaluate":
            methods = _methods(params, args.method)
            cmd_evaluate(params, methods)
            if not args.method:  # evaluating every method ends with the comparison table
                cmd_compare(params, methods)
        elif args.command == "compare":
            cmd_compare(params, _methods(params, args.method))
        elif args.command == "counting":
            cmd_counting(params)
        elif args.command == "run":
            cmd_run(args)
        elif args.command == "predict":
            cmd_predict(params, args)
        elif args.command == "bench":
            from numclip.commands.bench import print_model
            from numclip.commands.bench import run as run_bench

            if args.model:  # the roofline model alone: nothing is timed
                print_model()
            elif args.step:
                from numclip.commands.bench_step import run_step

                run_step(args.out)
            else:
                run_bench(args.out, args.quick)
    except NumclipError as e:
        print(f"numclip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("numclip: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
