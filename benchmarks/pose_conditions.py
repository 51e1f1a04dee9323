"""Which of its task's pose conditions a humanoid run's states meet, window by window of its replay buffer.

    python benchmarks/pose_conditions.py RUN_DIR --window 100000

A pose run that never reaches its pose (`--reward pose`, docs/humanoid.md) still says something: the conditions
its states already meet, and the one feature that never moves towards its threshold. For each window of
transitions (in the order they were collected) the table gives, per condition of the run's task, the median
feature and the share of states meeting it, and the share in the whole pose. The states are the buffer's next
observations at the newest readable checkpoint (the run may go on writing; nothing in its folder is touched), put
back into the robot at x = y = 0 (the features do not depend on where it stands).
"""

import os
import sys
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_clip_humanoid as humanoid  # noqa: E402  (chooses MuJoCo's OpenGL backend before mujoco is imported)
import mujoco  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reward_report  # noqa: E402  (its newest_checkpoint reads a live run's folder without touching it)


@dataclass
class Args:
    run: Annotated[str, tyro.conf.Positional]
    """a humanoid run folder with checkpoints that hold the replay buffer"""
    window: int = 100_000
    """transitions per row"""
    every: int = 10
    """judge every this many states of a window (1: all)"""


def newest_checkpoint(run: str) -> dict:
    state = reward_report.newest_checkpoint(run)
    if state is None:
        raise SystemExit(f"error: {run!r} holds no readable checkpoint (checkpoint_*.pt).")
    return state


def condition_table(args: Args) -> list[dict]:
    """One row per window: its first transition (counted from the run's start), the share in the pose, and
    (median, share met) per condition."""
    state = newest_checkpoint(args.run)
    if not state.get("buffer") or state["buffer"]["pos"] == 0 and not state["buffer"]["full"]:
        raise SystemExit(f"error: {args.run!r}: its checkpoint holds no replay buffer (--no-checkpoint-buffer).")
    task = state["args"]["task"]
    conditions = humanoid.TASKS[task].conditions
    buffer, first = state["buffer"], 0
    observations = buffer["next_obs"].numpy()
    if buffer["full"]:  # a ring: the oldest transition sits at pos; the buffer holds the run's last `size`
        observations = np.concatenate([observations[buffer["pos"]:], observations[:buffer["pos"]]])
        first = state["global_step"] - len(observations)
    env = humanoid.CLIPHumanoidEnv((16, 16), textured=False, fast_render=True)  # nothing is rendered
    nq = env.model.nq
    rows = []
    for start in range(0, len(observations), args.window):
        features = []
        for observation in observations[start:start + args.window:args.every]:
            env.data.qpos[:] = np.concatenate([[0.0, 0.0], observation[: nq - 2]])  # qpos without x and y
            mujoco.mj_forward(env.model, env.data)
            features.append(humanoid.pose_features(env.data))
        depths = np.array([[humanoid.condition_depth(f, c) for c in conditions] for f in features])
        rows.append(dict(start=first + start, in_pose=float(np.mean((depths >= 0).all(axis=1))), conditions={
            f"{c[0]} {c[1]} {c[2]}": (float(np.median([f[c[0]] for f in features])), float(np.mean(depths[:, i] >= 0)))
            for i, c in enumerate(conditions)}))
    env.close()
    return rows


def main(args: Args) -> list[dict]:
    rows = condition_table(args)
    names = list(rows[0]["conditions"])
    print("| transitions | in the pose | " + " | ".join(f"`{name}`: median, met" for name in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in rows:
        cells = [f"{median:.2f}, {met:.0%}" for median, met in row["conditions"].values()]
        print(f"| {row['start'] // 1000}k– | {row['in_pose']:.1%} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
