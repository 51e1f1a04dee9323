"""Does `--reward pose` order states as the pose detector does? For each of the humanoid's eight tasks:
the pose score (sac_clip_humanoid.pose_score) of zero-action states, random-action states and states in
the pose, and its Spearman rank correlation with the detector's in-pose flag over all of them.

    python benchmarks/pose_reward_report.py --out pose_reward_report.json

States: every step of `--episodes` episodes of zero actions and as many of uniform random actions, from
the env's start states (seeds 0, 1, ...), and the hand-built poses of benchmarks/pose_contact_sheet.py
with their jittered copies (most tasks' only states in the pose: zero and random actions rarely reach
them). The AUC says how often a score orders a pair of states (one in the pose, one out) as the detector
does. The score's own AUC is 1 by construction (the flag is half of it: 0.9-1 in the pose, below 0.5 out
of it), and its Spearman ρ with the flag is then the ρ of any perfectly separating score, set by how many
states are in the pose. What can fail is the graded part alone (2 score - flag): its AUC and ρ say
whether it points into the pose by itself, as the reward's shaping must. Nothing is rendered.
"""

import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pose_contact_sheet as sheet  # noqa: E402
from reward_stats import auc, spearman  # noqa: E402
import sac_clip_humanoid as humanoid  # noqa: E402


@dataclass
class Args:
    out: str = "pose_reward_report.json"
    """the JSON file to write (the table is printed)"""
    episodes: int = 32
    """episodes (100 steps) of zero actions, and as many of random actions"""
    jitters: int = 12
    """jittered copies of each hand-built pose (as the contact sheet's)"""
    seed: int = 0
    """seed of the start states, the random actions and the jitter"""


def rollout_features(env, act, episodes: int, seed: int) -> list:
    """Pose features of every state that `episodes` episodes of actions `act()` reach (no termination)."""
    features = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        for _ in range(100):
            env.step(act())
            features.append(humanoid.pose_features(env.unwrapped.data))
    return features


def quantiles(values) -> list:
    return [round(float(q), 3) for q in np.quantile(values, [0.05, 0.5, 0.95])] if len(values) else []


def main(args: Args) -> dict:
    env = humanoid.CLIPHumanoidEnv(frame_size=(64, 64))  # simulation only
    env.action_space.seed(args.seed)
    zeros = np.zeros(env.action_space.shape, np.float32)
    states = {"zero actions": rollout_features(env, lambda: zeros, args.episodes, args.seed),
              "random actions": rollout_features(env, env.action_space.sample, args.episodes, args.seed)}
    built = sheet.collect_states(env, sheet.Args(jitters=args.jitters, rollouts=0, seed=args.seed))
    states["hand-built and jittered"] = []
    for _, qpos, qvel in built:
        env.set_state(qpos, qvel)
        states["hand-built and jittered"].append(humanoid.pose_features(env.unwrapped.data))

    report = {}
    print("| task | zero actions: in pose, score 5/50/95% | random actions: in pose, score 5/50/95% | "
          "states in the pose: count, score 5/50/95% | best score out of the pose | Spearman ρ | graded part alone: AUC, ρ |")
    print("|---|---|---|---|---|---|---|")
    for task in humanoid.TASKS:
        scored = {name: (np.array([humanoid.pose_score(f, task) for f in fs]),
                         np.array([humanoid.in_pose(f, task) for f in fs])) for name, fs in states.items()}
        scores = np.concatenate([s for s, _ in scored.values()])
        flags = np.concatenate([f for _, f in scored.values()])
        row = {name: dict(in_pose=float(f.mean()), score=quantiles(s)) for name, (s, f) in scored.items()}
        row.update(in_pose_states=int(flags.sum()), in_pose_score=quantiles(scores[flags]),
                   best_out_of_pose=float(scores[~flags].max()), auc=auc(scores, flags),
                   spearman=spearman(scores, flags), graded_auc=auc(2 * scores - flags, flags),
                   graded_spearman=spearman(2 * scores - flags, flags))
        report[task] = row
        print(f"| {task} | {row['zero actions']['in_pose']:.2f}, {row['zero actions']['score']} | "
              f"{row['random actions']['in_pose']:.2f}, {row['random actions']['score']} | "
              f"{row['in_pose_states']}, {row['in_pose_score']} | {row['best_out_of_pose']:.3f} | "
              f"{row['spearman']:.3f} | {row['graded_auc']:.3f}, {row['graded_spearman']:.3f} |")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
