"""Where a pretraining step's GPU time goes, per configuration: torch.profiler's top kernels.

Written for issue 27's open question: relative patch location ran slower in bf16 + channels-last
(358 volumes/s) than in fp32 eager (415) on one H200 — many small patches through the encoder,
layout conversions or the head? Each configuration of ``benchmarks/pretrain.py`` is profiled over
``--steps`` Pretrainer steps after ``--warmup`` steps; the table lists the kernels by total
device time, so that a conversion (``copy_``/``contiguous``) or a slow layout kernel stands out.

    python benchmarks/profile_step.py --task rpl --configs fp32 bf16 bf16-cl --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain import CONFIGS, Volumes, tasks

import pretext3d as p3
from pretext3d.pretrainer import PretrainConfig, Pretrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rpl")
    parser.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=["fp32", "bf16", "bf16-cl"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = p3.engine.resolve_device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name in args.configs:
        settings = {**CONFIGS[name]}
        settings.setdefault("compile", False)  # a profile of compiled code names Triton kernels only
        encoder = p3.models.UNetEncoder(3, 1)
        task = tasks(args.size)[args.task]
        with tempfile.TemporaryDirectory() as folder:
            for steps, measured in ((args.warmup, False), (args.warmup + args.steps, True)):
                config = PretrainConfig(
                    steps=steps, batch_size=args.batch, device=str(device), log_every=1, eval_every=10**6,
                    checkpoint_every=args.warmup, progress=False, shortcut_check=0, **settings,
                )  # fmt: skip
                trainer = Pretrainer(encoder, task, Volumes(args.batch * 4, args.size), config,
                                     Path(folder) / "enc.pt", log=lambda line: None)  # fmt: skip
                if not measured:
                    trainer.fit()
                    continue
                with profile(activities=activities) as prof:
                    trainer.fit()  # resumes at the warm-up's checkpoint: only the measured steps
        print(
            f"\n== {args.task}, {name} ({settings}), {args.steps} steps at {args.size}^3, batch {args.batch}"
        )
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
