"""Can a task's pose be reached and held in one episode from the env's start states, with the robot's own
actuators? A PD controller that drives every joint towards the task's hand-built pose answers, with no learning.

    python benchmarks/pose_reachable.py --tasks doing-splits lotus-position

The controller's action for each actuator is kp (q* - q) - kd q' (clipped to the action space), where q is its
joint's angle, q' its velocity and q* the hand-built pose's angle (`TASKS[task].pose`, clipped into the joint's
range), reached along a ramp: q* moves from the start state's angle to the pose's over `ramp` steps. For each
task the gains are chosen from a small grid on one start state (seed + 30,000), then run on --episodes others
(the action baselines' start states, seed + 20,000 + episode). The table gives, for the chosen gains, the fraction of steps
in the pose and the success rate (in the pose for at least half of the episode), and how many of the grid's
gains succeed on the start state they were chosen on.

It is a reference, not a learner: the controller is told the pose's joint angles, which SAC never sees. But it
is a policy SAC could represent (the joint angles and velocities are in the observation), so a task it reaches
while SAC does not is one that an episode of 1.5 s and the actuators allow: the failure is SAC's search.
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


def pd_episode(env, task: str, kp: float, kd: float, ramp: int, seed: int) -> np.ndarray:
    """One episode of the PD controller from the start state of `seed`: the detector's in-pose flag per step."""
    model, data = env.unwrapped.model, env.unwrapped.data
    joints = model.actuator_trnid[:, 0]  # each actuator drives one hinge joint
    qpos, qvel = model.jnt_qposadr[joints], model.jnt_dofadr[joints]
    pose = humanoid.TASKS[task].pose
    goal = np.clip(np.radians([pose.get(model.joint(j).name, 0.0) for j in joints]), *model.jnt_range[joints].T)
    env.reset(seed=seed)
    start, flags, done, t = data.qpos[qpos].copy(), [], False, 0
    while not done:
        t += 1
        target = start + min(t / ramp, 1.0) * (goal - start)
        action = kp * (target - data.qpos[qpos]) - kd * data.qvel[qvel]
        _, in_pose, terminated, truncated, _ = env.step(np.clip(action, env.action_space.low, env.action_space.high))
        flags.append(in_pose)
        done = terminated or truncated
    return np.array(flags)


def reachability(task: str, args: Args) -> dict:
    env = humanoid.make_env(args.episode_length, task=task, fast_render=True)()  # nothing is rendered
    tried = {gains: pd_episode(env, task, *gains, seed=args.seed + 30_000).mean() for gains in GAINS}
    best = max(tried, key=tried.get)
    fractions = [pd_episode(env, task, *best, seed=args.seed + 20_000 + e).mean() for e in range(args.episodes)]
    env.close()
    return dict(task=task, kp=best[0], kd=best[1], ramp=best[2], pose_fraction=float(np.mean(fractions)),
                success_rate=float(np.mean(np.array(fractions) >= humanoid.SUCCESS_FRACTION)),
                gains_that_succeed=sum(f >= humanoid.SUCCESS_FRACTION for f in tried.values()))


def main(args: Args) -> list[dict]:
    rows = [reachability(task, args) for task in args.tasks]
    print(f"| task | kp, kd, ramp | in the pose | success ({args.episodes} start states) | gains of the {len(GAINS)} that succeed |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['task']}` | {r['kp']}, {r['kd']}, {r['ramp']} | {r['pose_fraction']:.0%} | {r['success_rate']:.0%} | "
              f"{r['gains_that_succeed']} |")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
