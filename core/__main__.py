"""Headless command line: `python -m core <command> ...`.

Each command is one function taking the parsed arguments; results go to stdout
as JSON, user errors to stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.backbones import BACKBONES, DEFAULT_BACKBONE  # noqa: E402
from core.config import ModelConfig  # noqa: E402
from core.errors import UserError  # noqa: E402

USER_ERROR_EXIT = 2


def summary(args: argparse.Namespace) -> dict:
    """Parameter counts and the layer table of a freshly built model."""
    from core.model import build_model, count_params, layer_table, set_trainable

    model_config = ModelConfig(
        backbone=args.backbone,
        weights=args.weights,
        pooling=args.pooling,
        hidden_units=args.hidden_units,
    )
    model = build_model(model_config, args.classes, args.image_size)
    set_trainable(model, args.fine_tune_at, args.freeze_batchnorm)
    return {**count_params(model), "layers": layer_table(model)}


def _add_summary(commands) -> None:
    parser = commands.add_parser("summary", help="parameter counts and layers of a model")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=list(BACKBONES))
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument(
        "--fine-tune-at", default=None,
        help="unfreeze the backbone: 'all', a layer index or a layer name (default: frozen)",
    )
    parser.add_argument("--freeze-batchnorm", action="store_true")
    parser.add_argument("--weights", default="imagenet", help="imagenet, none or a file path")
    parser.add_argument("--pooling", default="avg", choices=["avg", "flatten"])
    parser.add_argument("--hidden-units", type=int, default=0)
    parser.set_defaults(command=summary)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")
    _add_summary(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        # Keep stdout for the JSON result: Keras prints download progress there.
        with contextlib.redirect_stdout(sys.stderr):
            result = args.command(args)
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
