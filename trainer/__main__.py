"""``python -m trainer`` / ``torchrun --nproc_per_node N -m trainer``: train from the shell.

Every :class:`~trainer.config.TrainConfig` field is a flag (``max_len`` -> ``--max-len``,
booleans as ``--pack/--no-pack``). ``--show-masks N`` prints N examples with their trained
spans and exits; ``--plan`` prints the per-GPU memory plan (trainer/plan.py) and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any

from trainer.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per config field (defaults from the dataclass)."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="SFT on a selfevo export (LoRA or full).",
        epilog="Example: python -m trainer --data export/ --base ./model --out runs/a --max-steps 100",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "kinds":
            parser.add_argument(flag, type=lambda s: [k for k in s.split(",") if k], default=default)
        elif f.name == "betas":
            parser.add_argument(flag, type=lambda s: tuple(float(x) for x in s.split(",")),
                                default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--show-masks", type=int, default=0, metavar="N",
                        help="print N examples with trained spans highlighted, then exit")
    parser.add_argument("--plan", action="store_true",
                        help="print the per-GPU memory plan for --base's config.json, then exit")
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")),
                        help="--plan: number of GPUs (default: torchrun's WORLD_SIZE, else 1)")
    parser.add_argument("--gpu-memory", type=float, default=80.0,
                        help="--plan: GiB per GPU (default 80)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, then train (or show masks). Errors print one line and exit 1."""
    from trainer.errors import TrainerError

    args = vars(build_parser().parse_args(argv))
    show = args.pop("show_masks")
    plan, world, gpu_memory = args.pop("plan"), args.pop("world_size"), args.pop("gpu_memory")
    cfg = TrainConfig(**args)
    try:
        if plan:
            from trainer.plan import plan_report

            print(plan_report(cfg, world, gpu_memory)[0])
            return 0
        if show:
            from trainer.show_masks import show_masks

            show_masks(cfg, show)
            return 0
        from trainer.train import train

        result = train(cfg, on_step=step_printer(cfg.log_every) if cfg.progress else None)
    except TrainerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    # Only after success: destroying the group while other ranks are still in a collective
    # deadlocks them, and a failing rank exits non-zero anyway.
    _leave_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved {result.final_dir} (snapshot {result.snapshot_hash}, {result.steps} steps)")
    return 0


def step_printer(every: int) -> Any:
    """An ``on_step`` that prints a plain line every ``every`` steps and at the last one.

    Plain lines, not a bar: torchrun interleaves the ranks' output and often writes to a log.
    """

    def on_step(step: int, total: int, metrics: dict[str, Any]) -> None:
        if metrics and (step % every == 0 or step == total):
            print(f"step {step}/{total}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.3g}  "
                  f"{metrics['tokens_per_s']:,.0f} tok/s", flush=True)

    return on_step


def _leave_process_group() -> None:
    """Tear the torchrun process group down explicitly.

    Left to interpreter exit, gloo's worker threads can be destroyed while still joinable and a
    rank aborts ("terminate called without an active exception") after training succeeded.
    """
    if "torch" not in sys.modules:
        return
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
