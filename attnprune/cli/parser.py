"""The ``attnprune`` argument parser: one subparser per subcommand, method options as typed flags."""

from __future__ import annotations

import argparse

from .common import PROG, int_list, nonneg_int, positive_int
from .deploy_commands import run_bench, run_export, run_report
from .method_flags import add_method_flags, method_in, parse_option
from .methods_command import run_methods
from .prune_command import run_prune

__all__ = ["build_parser", "method_in"]


def round_to_value(text: str) -> int | str:
    """argparse type of ``--round-to``: ``auto`` or an int >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an int >= 1, got {text!r}") from None


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``attnprune`` command (one subparser per subcommand).

    Args:
        method: The method whose typed option flags ``prune`` gets (default:
            :data:`attnprune.DEFAULT_METHOD`); :func:`attnprune.cli.main` passes
            the ``--method`` of the command line (see :func:`method_in`).
    """
    from .. import __version__
    from ..core.budget import TARGETS
    from ..deploy.ort_session import PROVIDERS
    from ..methods import available_methods
    from ..train.pipeline import DEFAULT_METHOD

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learn which channels of a CNN to remove, remove them, export and benchmark the result.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prune", help="prune a model and write model.pt, model.onnx and a report",
                       description="Prune a model on a dataset; write model.pt, model.onnx, report.json, "
                                   "report.md and figures into --out (atomically: all or nothing). "
                                   "The method's options are flags of their own: see "
                                   "'attnprune prune --method NAME --help', and 'attnprune methods' "
                                   "for every method, its paper and its options.")
    taken: set[str] = {"-h", "--help"}

    def add(*flags, **kwargs):
        taken.update(flags)
        return p.add_argument(*flags, **kwargs)

    add("--model", default="resnet20",
                   help="resnet20/32/44/56/110, any torchvision classification name (resnet18, "
                        "mobilenet_v2, ...), a timm model as timm:NAME (timm:resnet18; needs "
                        "pip install attnprune[timm]; built with pretrained=False, so load weights with "
                        "--weights), or a factory module:function called with the num_classes and "
                        "in_channels (timm: in_chans) it takes (default: %(default)s)")
    add("--weights", metavar="FILE", help="dense state dict to load into the model before pruning")
    add("--data", default="fashion-mnist",
                   help="'fashion-mnist' or an ImageFolder root: train/<class>/* images and optionally "
                        "val/<class>/* (without val/, --val-fraction of train/ is held out) "
                        "(default: %(default)s)")
    add("--data-root", metavar="DIR", help="folder holding the Fashion-MNIST IDX files "
                   "(default: $ATTNPRUNE_DATA, /usr/share/datasets/fashion-mnist, the cache)")
    add("--download", action="store_true",
                   help="download Fashion-MNIST with torchvision into the cache when it is not found "
                        "(needs internet access)")
    add("--image-size", type=positive_int, metavar="N",
                   help="resize images to NxN (ImageFolder default 224; Fashion-MNIST default 28)")
    add("--normalize", choices=["auto", "imagenet", "sample", "none"], default="auto",
                   help="ImageFolder normalisation: ImageNet mean/std, mean/std computed from 256 training "
                        "images, or none; auto = imagenet with --trained and a torchvision/timm model "
                        "(ImageNet weights), else sample (default: %(default)s)")
    add("--no-augment", dest="augment", action="store_false",
                   help="ImageFolder: no training augmentation (by default training images get a random "
                        "resized crop and a horizontal flip; validation images are only resized)")
    add("--val-fraction", type=float, metavar="F",
                   help="ImageFolder without val/: fraction of train/ held out for validation, in (0, 1), "
                        "the same images for every --seed (default: 0.1)")
    add("--workers", type=nonneg_int, default=0, metavar="N",
                   help="data loader worker processes (default: %(default)s)")
    add("--train-subset", type=positive_int, metavar="N", help="use N training samples")
    add("--test-subset", type=positive_int, metavar="N", help="use N evaluation samples")
    add("--batch-size", type=positive_int, default=128, metavar="N", help="default: %(default)s")
    add("--ratio", type=float, default=0.5,
                   help="fraction of --target to remove, in (0, 1) (default: %(default)s)")
    add("--method", choices=available_methods(), default=DEFAULT_METHOD,
                   help="pruning method (default: %(default)s)")
    add("--target", choices=list(TARGETS), default="params",
        help="what --ratio removes: params, macs (per sample) or latency (ONNX Runtime, measured on this "
             "machine at --latency-batch and --latency-threads; default: %(default)s)")
    add("--round-to", type=round_to_value, default="auto", metavar="N|auto",
        help="keep a multiple of N channels per group (ratio met within 2 points); 'auto' (default): the "
             "multiple the --provider's kernels want on this machine (16 with AVX-512, 8 with AVX2 or "
             "CUDA, else 4); 1: free channel counts (within 1 point)")
    add("--provider", choices=list(PROVIDERS), default="cpu",
        help="deployment target: decides --round-to auto and where --target latency is measured "
             "(default: %(default)s; not the training --device)")
    add("--latency-batch", type=positive_int, default=1, metavar="N",
        help="batch size at which --target latency is measured (default: %(default)s)")
    add("--latency-threads", type=positive_int, metavar="N",
        help="ONNX Runtime threads for --target latency (default: all usable CPUs)")
    add("--option", type=parse_option, action="append", metavar="KEY=VALUE",
                   help="a method option (repeatable), e.g. --option lr=0.01; values are Python literals, "
                        "else strings. The typed flags below do the same; --option also reaches an "
                        "option whose name a flag above already uses")
    add("--trained", action="store_true",
                   help="the model is trained already (e.g. loaded with --weights): skip the warm-up; "
                        "no weights are downloaded")
    add("--pretrained", dest="trained", action="store_true",
                   help="deprecated alias of --trained")
    add("--distill", action=argparse.BooleanOptionalAction, default=None,
        help="distil from the network as it is when the first method phase starts (after the warm-up), "
             "frozen: the CNN's phases and fine-tuning minimise (1-W)*task + W*T^2*KL of the softened "
             "logits (Hinton et al. 2015). Default: on when the model returns class logits; "
             "--no-distill turns it off")
    add("--distill-temperature", type=float, metavar="T",
        help="the distillation temperature T > 0 softening both logits (default: 4)")
    add("--distill-weight", type=float, metavar="W",
        help="the soft-target term's weight W in [0, 1] (default: 0.5)")
    add("--seed", type=nonneg_int, default=0, help="default: %(default)s")
    add("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    add("--checkpoint-dir", metavar="DIR",
                   help="write a checkpoint here at every epoch end (outside --out, so it survives a failure)")
    add("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    add("--out", metavar="DIR", help="output folder (must be empty or new; required unless --dry-run)")
    add("--overwrite", action="store_true", help="replace a non-empty --out folder")
    add("--dry-run", action="store_true",
        help="check everything, instrument, time a few steps and print the phases, passes and an estimated "
             "time; train nothing and write nothing")
    add("--quiet", action="store_true", help="no progress bars or status messages")
    method = DEFAULT_METHOD if method is None else method
    p.set_defaults(func=run_prune, method_specs=add_method_flags(p, method, taken))

    p = sub.add_parser("methods", help="list the pruning methods, their papers and options",
                       description="List each registered pruning method with its paper and its options "
                                   "(type, default, valid values, one line of help).")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this method")
    p.set_defaults(func=run_methods)

    p = sub.add_parser("export", help="export a saved model.pt to ONNX",
                       description="Reload a model.pt and export it to ONNX with an ONNX Runtime parity check.")
    p.add_argument("--model-file", required=True, metavar="FILE", help="a model.pt written by 'attnprune prune'")
    p.add_argument("--out", required=True, metavar="FILE", help="destination .onnx file")
    p.add_argument("--input-shape", type=int_list, metavar="N,C,H,W",
                   help="example input shape (default: the one recorded in the model file, batch 1)")
    p.add_argument("--base", metavar="SPEC", help="base architecture (name or module:function) when the "
                   "file was saved with a user-defined one")
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="fixed batch size instead of a dynamic batch axis")
    p.set_defaults(func=run_export)

    p = sub.add_parser("bench", help="time dense vs. pruned with ONNX Runtime",
                       description="Time the dense and pruned models with ONNX Runtime in interleaved rounds.")
    p.add_argument("--pruned", required=True, metavar="FILE", help="model.pt (or .onnx) of the pruned model")
    p.add_argument("--dense", metavar="SPEC",
                   help="model.pt, .onnx, a model name or module:function (default: the unpruned "
                        "architecture recorded in --pruned, randomly initialised)")
    p.add_argument("--base", metavar="SPEC", help="base architecture for files saved with a user-defined one")
    p.add_argument("--input-shape", type=int_list, metavar="N,C,H,W",
                   help="example input shape (default: recorded in --pruned; for an .onnx --pruned, "
                        "read from the file when only the batch dimension is dynamic)")
    p.add_argument("--num-classes", type=positive_int, metavar="N",
                   help="classes of a --dense given by name (default: recorded in --pruned, else 10)")
    p.add_argument("--batch-sizes", type=int_list, default=[1], metavar="B1,B2",
                   help="batch sizes to time, e.g. 1,8 (default: 1)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="intra-op threads (default: all usable CPUs)")
    p.add_argument("--rounds", type=positive_int, default=15, metavar="N", help="default: %(default)s")
    p.add_argument("--warmup", type=nonneg_int, default=3, metavar="N", help="untimed calls (default: %(default)s)")
    p.add_argument("--provider", choices=list(PROVIDERS), default="cpu", help="default: %(default)s")
    p.add_argument("--json", metavar="FILE", help="also write the full result as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    p.set_defaults(func=run_bench)

    p = sub.add_parser("report", help="print or regenerate a report from report.json",
                       description="Print the Markdown summary of a report.json, or regenerate report.md "
                                   "and figures into --out.")
    p.add_argument("--report", required=True, metavar="FILE", help="report.json written by 'attnprune prune'")
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md and figures here instead of printing")
    p.add_argument("--bench", metavar="FILE", help="a bench JSON (attnprune bench --json) to append")
    p.set_defaults(func=run_report)
    return parser
