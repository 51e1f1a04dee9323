"""How fast `sac_clip_humanoid.py --reward pose` trains on a CPU, against the physics alone.

    taskset -c 0 python benchmarks/pose_speed.py --json pose_speed.json     # ~4 minutes: 3 repeats

Measured back to back, `--repeats` times (the ratio of one repeat varies by up to ~25% on a shared machine),
on the threads given (`--threads`, one by default; pin the process to as many
cores, and run it on a quiet machine):
- raw physics: gymnasium's Humanoid-v5 alone with random actions, one env (before, between and after each
  repeat's runs; each repeat's ratio is against the median of its own three), twice: as gymnasium makes it (an
  episode ends when the robot falls, ~24 steps with random actions) and with the pose run's episodes (no end on
  falling, 100 steps), whose robot lies on the floor most of the time, where its contacts make each step dearer;
- the training loop after learning starts, at the paper's update ratio (100 gradient steps of batch 512
  per 3,200 transitions, 32 envs): two runs that differ only in length, so that their difference in
  training time over their difference in steps is the marginal rate, without start-up, the random steps
  before learning starts or the evaluation;
- one SAC update: its FLOPs (torch's FlopCounterMode), milliseconds and FLOP rate, against the rate of
  plain matrix products of the update's shapes on the same threads, and the steps/s bound the update's
  FLOPs alone would set at that rate, and with the physics of the pose run's episodes added.
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_clip_humanoid as humanoid  # noqa: E402


@dataclass
class Args:
    task: humanoid.TaskName = "kneeling"
    """the pose task of the training runs"""
    threads: int = 1
    """torch threads"""
    raw_steps: int = 5000
    """steps of raw Humanoid-v5, each time it is measured"""
    learning_starts: int = 3200
    """transitions of random actions before learning starts (both runs)"""
    phases: tuple[int, int] = (2, 8)
    """training phases after learning starts, of the short and the long run"""
    train_frequency: int = 3200
    """transitions per training phase (the paper's: 100 vector steps of 32 envs)"""
    gradient_steps: int = 100
    """updates per training phase (the paper's)"""
    updates: int = 30
    """SAC updates timed for the FLOP rate"""
    repeats: int = 3
    """times the raw physics and the two runs are measured, one after another"""
    json: str | None = None
    """write the figures to this JSON file"""


def raw_physics(steps: int, episode_length: int | None = None) -> tuple[float, int]:
    """(steps per second, episodes ended) of gymnasium's Humanoid-v5 with random actions, one env: reset when it
    falls (gymnasium's episode), or with `episode_length`, reset only after that many steps (the pose run's)."""
    same_episodes = dict(terminate_when_unhealthy=False, max_episode_steps=episode_length) if episode_length else {}
    env = gym.make("Humanoid-v5", **same_episodes)
    env.reset(seed=0)
    env.action_space.seed(0)
    start, episodes = time.perf_counter(), 0
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
            episodes += 1
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds, episodes


def training_seconds(args: Args, phases: int, folder: str) -> tuple[int, float]:
    """(transitions, seconds of training) of a `--reward pose` run with the paper's SAC settings."""
    run = humanoid.Args(reward="pose", task=args.task, learning_starts=args.learning_starts,
                        train_frequency=args.train_frequency, gradient_steps=args.gradient_steps,
                        total_timesteps=args.learning_starts + phases * args.train_frequency,
                        eval_episodes=0, video_interval=10**9, baseline_episodes=0, fast_render=True,
                        checkpoint_buffer=False, checkpoint_interval=10**9, torch_threads=args.threads,
                        output_dir=folder)
    result = humanoid.main(run)
    return result["global_step"], result["wall_seconds"]


def update_figures(args: Args) -> dict:
    """One SAC update of the paper's sizes: GFLOP, milliseconds, GFLOP/s, and the rate of plain matrix products
    of its shapes on these threads."""
    defaults = humanoid.Args()
    env = humanoid.make_env(100)()
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = humanoid.SoftActorCritic(env.observation_space, env.action_space, defaults, "cpu")
    batch = defaults.batch_size
    sample = lambda: (torch.randn(batch, obs_dim), torch.rand(batch, action_dim) * 0.8 - 0.4,  # noqa: E731
                      torch.rand(batch), torch.randn(batch, obs_dim), torch.zeros(batch))
    agent.update(*sample())  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        agent.update(*sample())
    flops = counter.get_total_flops()
    samples = [sample() for _ in range(args.updates)]
    start = time.perf_counter()
    for s in samples:
        agent.update(*s)
    seconds = (time.perf_counter() - start) / args.updates
    # The update's matrix products: the critics' and the actor's layers, forward and backward.
    hidden, best = defaults.hidden_size, 0.0
    for m, k, n in ((batch, obs_dim + action_dim, hidden), (batch, hidden, hidden), (batch, obs_dim, hidden),
                    (hidden, batch, hidden)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        start = time.perf_counter()
        for _ in range(200):
            torch.mm(a, b)
        best = max(best, 2 * m * k * n * 200 / (time.perf_counter() - start))
    transitions_per_update = args.train_frequency / args.gradient_steps
    return dict(update_gflop=flops / 1e9, update_ms=seconds * 1e3, update_gflops_per_s=flops / seconds / 1e9,
                matmul_gflops_per_s=best / 1e9, update_bound_sps=transitions_per_update * best / flops)


def main(args: Args) -> dict:
    if args.phases[0] < 1 or args.phases[1] <= args.phases[0]:  # both runs must train and evaluate, the long one longer
        raise SystemExit(f"error: --phases must be two counts 1 <= short < long, got {args.phases}.")
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be at least 1, got {args.repeats}.")
    torch.set_num_threads(args.threads)
    episode_length = humanoid.Args().episode_length
    physics = lambda: (raw_physics(args.raw_steps)[0], raw_physics(args.raw_steps, episode_length)[0])  # noqa: E731
    measured, rates = [], []  # per repeat: physics before, between and after its runs (each a pair: both episodes)
    for _ in range(args.repeats):
        before = physics()  # measured around the runs: it varies by ~10-20% on a shared CPU
        with tempfile.TemporaryDirectory() as folder:
            short_steps, short_seconds = training_seconds(args, args.phases[0], folder)
            between = physics()
            long_steps, long_seconds = training_seconds(args, args.phases[1], folder)
        measured.append((before, between, physics()))
        rates.append((long_steps - short_steps) / (long_seconds - short_seconds))
    raws, raws_same = ([[pair[i] for pair in repeat] for repeat in measured] for i in (0, 1))
    each_ratio = lambda physics: [rate / np.median(raw) for rate, raw in zip(rates, physics)]  # noqa: E731
    ratios, ratios_same = each_ratio(raws), each_ratio(raws_same)
    pose_sps = float(np.median(rates))
    figures = dict(settings=asdict(args), torch_threads=torch.get_num_threads(), raw_sps=raws,
                   raw_same_episodes_sps=raws_same, pose_sps_each=rates, pose_sps_after_learning_starts=pose_sps,
                   pose_over_raw_each=ratios, pose_over_raw=float(np.median(ratios)),
                   pose_over_raw_same_episodes=float(np.median(ratios_same)), **update_figures(args))
    figures["pose_over_update_bound"] = pose_sps / figures["update_bound_sps"]
    # A loop that paid only these: each transition's share of an update at the products' rate, and its physics.
    figures["update_and_physics_bound_sps"] = 1 / (1 / figures["update_bound_sps"] + 1 / np.median(raws_same))
    figures["pose_over_update_and_physics_bound"] = pose_sps / figures["update_and_physics_bound_sps"]
    groups = lambda physics: "; ".join(", ".join(f"{v:.0f}" for v in raw) for raw in physics)  # noqa: E731
    print("| figure | value |\n|---|---|")
    for label, value in [
            ("raw Humanoid-v5, steps/s (before, between, after the runs; a repeat a group)", groups(raws)),
            ("`--reward pose` after learning starts, steps/s (each repeat)", ", ".join(f"{v:.0f}" for v in rates)),
            ("pose run / raw physics (the median of its repeat's three), each repeat",
             ", ".join(f"{v:.1%}" for v in ratios)),
            ("pose run / raw physics: median of the repeats, lowest", f"{np.median(ratios):.1%}, {min(ratios):.1%}"),
            ("raw Humanoid-v5 with the pose run's episodes (100 steps, no end on falling), steps/s", groups(raws_same)),
            ("pose run / that physics: median of the repeats, lowest",
             f"{np.median(ratios_same):.1%}, {min(ratios_same):.1%}"),
            ("SAC update (batch 512): GFLOP, ms", f"{figures['update_gflop']:.2f}, {figures['update_ms']:.1f}"),
            ("update GFLOP/s, matrix products' GFLOP/s", f"{figures['update_gflops_per_s']:.0f}, "
                                                         f"{figures['matmul_gflops_per_s']:.0f}"),
            ("steps/s bound of the update's FLOPs at the products' rate", f"{figures['update_bound_sps']:.0f}"),
            ("pose run / that bound", f"{figures['pose_over_update_bound']:.0%}"),
            ("steps/s bound of the update's FLOPs and the pose run's physics (median of all) together",
             f"{figures['update_and_physics_bound_sps']:.0f}"),
            ("pose run / that bound", f"{figures['pose_over_update_and_physics_bound']:.0%}")]:
        print(f"| {label} | {value} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main(tyro.cli(Args))
