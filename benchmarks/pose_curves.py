"""Learning curves of `sac_clip_humanoid.py --reward pose` runs from their TensorBoard logs: greedy success and
steps in the pose at each evaluation, against the zero-action and random-action baselines each run logged.

    python benchmarks/pose_curves.py runs/Humanoid__pose_kneeling_s1__1__* runs/Humanoid__pose_kneeling_s2__2__* \
        --out docs/pose_curves.png

One panel per run folder (its title: the folder's experiment name and seed): the fraction of the evaluation
episodes' steps in the pose (a line with dots) and their success rate (in the pose for at least half of the
episode: bars), with the baselines as horizontal lines. The markdown table it prints gives each evaluation's greedy
success, steps in the pose and how many different pose fractions its episodes had ("distinct": 1 when
they all did the same). A run's last point is its final evaluation, from other start states.
"""

import os
from dataclasses import dataclass
from typing import Annotated

import tyro


@dataclass
class Args:
    runs: Annotated[tuple[str, ...], tyro.conf.Positional]
    """run folders (each with its TensorBoard events)"""
    out: str = "pose_curves.png"
    """the figure to write"""


def read_scalars(run_dir: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def run_label(run_dir: str) -> str:
    """'pose_kneeling_s1, seed 1' from 'Humanoid__pose_kneeling_s1__1__1796245791'."""
    parts = os.path.basename(os.path.normpath(run_dir)).split("__")
    return f"{parts[1]}, seed {parts[2]}" if len(parts) >= 3 else run_dir


def main(args: Args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for run in args.runs:
        scalars = read_scalars(run)
        if "eval/pose_fraction" not in scalars:
            raise SystemExit(f"error: {run} has no evaluations (eval/pose_fraction) in its TensorBoard logs.")
        curves[run_label(run)] = dict(
            steps=[s for s, _ in scalars["eval/pose_fraction"]],
            pose_fraction=[v for _, v in scalars["eval/pose_fraction"]],
            success=[v for _, v in scalars["eval/success_rate"]],
            distinct=[v for _, v in scalars.get("eval/distinct_pose_fractions", [])],
            baselines={name.split("/", 1)[1]: values[0][1] for name, values in scalars.items()
                       if name.startswith("baselines/")})
    fig, axes = plt.subplots(len(curves), 1, figsize=(8, 2.6 * len(curves)), squeeze=False)
    for ax, (label, c) in zip(axes[:, 0], curves.items()):
        steps = [s / 1e6 for s in c["steps"]]
        ax.bar(steps, c["success"], width=0.04, color="tab:green", alpha=0.4, label="greedy success")
        ax.plot(steps, c["pose_fraction"], marker=".", color="tab:blue", label="greedy: steps in the pose")
        for kind, style in (("zero", "--"), ("random", ":")):
            if f"{kind}_actions_pose_fraction" in c["baselines"]:
                ax.axhline(c["baselines"][f"{kind}_actions_pose_fraction"], color="gray", linestyle=style,
                           label=f"{kind} actions: steps in the pose")
        ax.axhline(0.5, color="tab:green", linewidth=0.6, label="success: half of the episode")
        ax.set(ylim=(0, 1.02), title=label, ylabel="fraction")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("environment steps (millions)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)

    print("| steps | " + " | ".join(curves) + " |\n|---|" + "---|" * len(curves))
    base = lambda c, kind: c["baselines"].get(f"{kind}_actions_pose_fraction", float("nan"))  # noqa: E731
    print("| baselines: zero, random actions (steps in the pose) | "
          + " | ".join(f"{base(c, 'zero'):.0%}, {base(c, 'random'):.0%}" for c in curves.values()) + " |")
    for step in sorted({step for c in curves.values() for step in c["steps"]}):
        cells = []
        for c in curves.values():
            at = c["steps"].index(step) if step in c["steps"] else None
            distinct = f", {int(c['distinct'][at])} distinct" if at is not None and c["distinct"] else ""
            cells.append(f"{c['success'][at]:.1f} ({c['pose_fraction'][at]:.0%}{distinct})" if at is not None else "")
        print(f"| {step / 1000:.0f}k | " + " | ".join(cells) + " |")
    return curves


if __name__ == "__main__":
    main(tyro.cli(Args))
