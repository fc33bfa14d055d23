"""``landcover train``: train a model from a YAML config (PyTorch Lightning, loaded lazily
so the engine itself never imports it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from landcover.engine.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="training config (YAML)")
    parser.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE",
        help="config overrides, e.g. optim.lr=1e-4 data.batch_size=4",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder for checkpoints and logs (default: runs/CONFIG)"
    )
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--devices", help="devices per node: N, a list like 0,1, or auto")
    parser.add_argument("--num-nodes", type=int, help="machines (launched by torchrun/SLURM)")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "gpu", "cuda", "mps"))
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--precision", help="auto, 32-true, 16-mixed, bf16-mixed")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _trainer_overrides(args: argparse.Namespace) -> list[str]:
    options = {
        "devices": args.devices, "num_nodes": args.num_nodes, "accelerator": args.accelerator,
        "max_epochs": args.max_epochs, "max_steps": args.max_steps,
        "precision": args.precision, "seed": args.seed,
    }
    return [f"trainer.{key}={value}" for key, value in options.items() if value is not None]


def run(args: argparse.Namespace) -> int:
    try:
        from landcover.training.config import load_config
        from landcover.training.train import train
    except ImportError as error:
        raise ConfigError(
            f"training needs PyTorch Lightning and PyYAML ({error.name} is missing); "
            "install them with: pip install 'landcover[train]'"
        ) from None
    config = load_config(args.config, [*args.overrides, *_trainer_overrides(args)])
    out = args.out or Path("runs") / args.config.stem
    summary = train(config, out, resume=args.resume)
    if summary["global_rank"] != 0:
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        metrics = summary["val_metrics"] or {}
        print(f"trained {summary['steps']} steps ({summary['epochs']} epochs) into {out}")
        if metrics:
            print(f"validation: mIoU {metrics['miou']:.4f}  OA {metrics['oa']:.4f}  "
                  f"mF1 {metrics['mf1']:.4f}")
        print(f"export with: landcover export {summary['best'] or summary['last']} --out MODEL.lcm")
    return 0
