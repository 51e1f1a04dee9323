"""Can a task's pose be reached and held in one episode from the env's start states, with the robot's own
actuators? A PD controller that drives every joint towards the task's hand-built pose answers, with no learning.

    python benchmarks/pose_reachable.py --tasks doing-splits lotus-position

The controller's action for each actuator is kp (q* - q) - kd q' (clipped to the action space), where q is its
joint's angle, q' its velocity and q* the hand-built pose's angle (`TASKS[task].pose`, clipped into the joint's
range), reached along a ramp: q* moves from the start state's angle to the pose's over `ramp` steps. For each
task the gains are chosen from a small grid on one start state (seed + 30,000), then run on --episodes others
(the action baselines' start states, seed + 20,000 + episode). The table gives, for the chosen gains, the fraction
of steps in the pose, the success rate (in the pose for at least half of the episode) and what `--reward pose`
pays per step; the same for the best gains with ramp 1; and how many of the grid's gains succeed on the start
state they were chosen on.

It is a reference, not a learner: the controller is told the pose's joint angles, which SAC never sees. With ramp
1 its target is the pose from the first step, so its action is a function of the observation alone (Humanoid-v5's
holds every joint's angle and velocity): a policy SAC's actor could represent. A task it reaches is one that the
actuators and an episode of 1.5 s allow; one it does not reach may still be reachable another way (it cannot tilt
the trunk, for one: the hand-built pose's pitch is not a joint).
"""

import itertools
import os
import sys
from dataclasses import dataclass

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_clip_humanoid as humanoid  # noqa: E402  (chooses MuJoCo's OpenGL backend before mujoco is imported)

# kp in action units per radian (the actions are clipped to [-0.4, 0.4]; the motors' gears turn them into torques),
# kd per radian per second, ramp in steps.
GAINS = list(itertools.product([0.5, 1, 2, 4, 8], [0.02, 0.05, 0.1, 0.2], [1, 10, 25, 50]))


@dataclass
class Args:
    tasks: tuple[humanoid.TaskName, ...] = tuple(humanoid.TASKS)
    """the tasks to try"""
    episodes: int = 32
    """start states the chosen gains run from"""
    seed: int = 1
    """as a run's --seed: the start states are the action baselines' (seed + 20,000 + episode)"""
    episode_length: int = humanoid.Args.episode_length
    """steps per episode (the scripts' --episode-length)"""


def joint_targets(model, task: str):
    """In actuator order: the qpos and qvel addresses of the joints the actuators drive (each one hinge), and the
    hand-built pose's angles in radians, clipped into the joints' ranges (as `set_pose` puts them)."""
    joints = model.actuator_trnid[:, 0]
    pose = humanoid.TASKS[task].pose
    goal = np.clip(np.radians([pose.get(model.joint(j).name, 0.0) for j in joints]), *model.jnt_range[joints].T)
    return model.jnt_qposadr[joints], model.jnt_dofadr[joints], goal


def pd_action(data, qpos, qvel, target, kp: float, kd: float) -> np.ndarray:
    return kp * (target - data.qpos[qpos]) - kd * data.qvel[qvel]


def pd_episode(env, task: str, kp: float, kd: float, ramp: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One episode of the PD controller from the start state of `seed`: per step, the detector's in-pose flag and
    what `--reward pose` pays (`pose_score`)."""
    data = env.unwrapped.data
    qpos, qvel, goal = joint_targets(env.unwrapped.model, task)
    env.reset(seed=seed)
    start, flags, scores, done, t = data.qpos[qpos].copy(), [], [], False, 0
    while not done:
        t += 1
        target = start + min(t / ramp, 1.0) * (goal - start)  # with ramp 1, the pose itself from the first step
        action = pd_action(data, qpos, qvel, target, kp, kd)
        _, in_pose, terminated, truncated, _ = env.step(np.clip(action, env.action_space.low, env.action_space.high))
        flags.append(in_pose)
        scores.append(humanoid.pose_score(humanoid.pose_features(data), task))
        done = terminated or truncated
    return np.array(flags), np.array(scores)


def reachability(task: str, args: Args) -> dict:
    """The best gains of the grid, and the best with ramp 1, each run from --episodes start states."""
    env = humanoid.make_env(args.episode_length, task=task, fast_render=True)()  # nothing is rendered
    tried = {gains: pd_episode(env, task, *gains, seed=args.seed + 30_000)[0].mean() for gains in GAINS}
    row = dict(task=task, gains_that_succeed=sum(f >= humanoid.SUCCESS_FRACTION for f in tried.values()))
    for name, candidates in (("best", GAINS), ("ramp_1", [g for g in GAINS if g[2] == 1])):
        gains = max(candidates, key=tried.get)
        episodes = [pd_episode(env, task, *gains, seed=args.seed + 20_000 + e) for e in range(args.episodes)]
        fractions = np.array([flags.mean() for flags, _ in episodes])
        row[name] = dict(kp=gains[0], kd=gains[1], ramp=gains[2], pose_fraction=float(fractions.mean()),
                         success_rate=float(np.mean(fractions >= humanoid.SUCCESS_FRACTION)),
                         pose_reward=float(np.mean([scores.mean() for _, scores in episodes])))
    env.close()
    return row


def main(args: Args) -> list[dict]:
    rows = [reachability(task, args) for task in args.tasks]
    cell = lambda r: f"{r['kp']}, {r['kd']}, {r['ramp']} | {r['pose_fraction']:.0%} | {r['success_rate']:.0%} | {r['pose_reward']:.2f}"  # noqa: E731
    print(f"| task | best gains: kp, kd, ramp | in the pose | success ({args.episodes} start states) | pose reward per step "
          f"| ramp 1: kp, kd, ramp | in the pose | success | pose reward per step | gains of the {len(GAINS)} that succeed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['task']}` | {cell(r['best'])} | {cell(r['ramp_1'])} | {r['gains_that_succeed']} |")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
