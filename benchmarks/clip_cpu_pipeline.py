"""CLIP on a CPU: which chunk size is fastest, and is the scripts' pipeline at least as fast end to end as
the authors' plain one?

    python benchmarks/clip_cpu_pipeline.py --json clip_cpu_pipeline.json

1. Chunk sizes: the same frames scored by the reward model in CLIP passes of 16 ... 256 frames
   (frames/s, preprocessing included). The scripts' `--clip-chunk-size 0` rule takes its CPU value from
   this measurement.
2. End to end, CLIP-rewarded CartPole (`dqn_clip_cartpole.py`'s loop, its update ratio, 8 envs): the
   scripts' pipeline (frames drawn at CLIP's input size, scored at the CPU rule's chunk size) against
   the authors' (gymnasium's full 600x400 frame, resized to the input size, batches of 32), run
   alternately `--repeats` times each; the median steps/s of each.

Random CLIP weights (cost does not depend on them); nothing is downloaded. Run on a quiet machine with
the threads the training would use (`--threads`, default: torch's).
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import throughput  # noqa: E402
import dqn_clip_cartpole as cartpole  # noqa: E402


@dataclass
class Args:
    clip_model: str = "ViT-B-32"
    """open_clip architecture name (random weights)"""
    chunk_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    """CLIP passes' sizes to time"""
    frames: int = 256
    """frames scored at each chunk size"""
    steps: int = 800
    """environment steps of each end-to-end run (learning starts half way)"""
    repeats: int = 2
    """end-to-end runs of each pipeline, alternating"""
    threads: int = 0
    """torch threads (0: torch's default)"""
    json: str | None = None
    """write the figures to this JSON file"""


def chunk_sweep(reward_model, frames, sizes) -> dict:
    """Frames per second of the reward model at each chunk size, on the same frames."""
    figures = {}
    for size in sizes:
        reward_model.chunk_size = size
        reward_model(frames[:size])  # warm-up
        start = time.perf_counter()
        reward_model(frames)
        figures[size] = len(frames) / (time.perf_counter() - start)
    return figures


def end_to_end(reward_model, chunk_size: int, full_size_frames: bool, args: Args, folder: str) -> float:
    """Steps per second of the CartPole loop with CLIP's reward; `full_size_frames`: the authors' pipeline."""
    make_env, sweep_size = cartpole.make_env, reward_model.chunk_size
    reward_model.chunk_size = chunk_size  # the loop scores with the model it is given, at the model's chunk size
    if full_size_frames:  # gymnasium's 600x400 frame, which CLIPReward resizes to the model's input size
        cartpole.make_env = lambda episode_length, frame_size=None: make_env(episode_length, (400, 600))
    try:
        settings = throughput.Args(script="cartpole", clip_model=args.clip_model, batch_size=chunk_size,
                                   num_envs=cartpole.Args().num_envs, steps=args.steps, cuda=False)
        return throughput.measure_training(cartpole, reward_model, settings, folder)["sps"]
    finally:
        cartpole.make_env, reward_model.chunk_size = make_env, sweep_size


def main(args: Args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    reward_model = throughput.build_reward(cartpole, throughput.Args(clip_model=args.clip_model, cuda=False), device)
    env = cartpole.make_env(args.frames, reward_model.image_size)()
    env.reset(seed=0)
    frames = []
    for _ in range(args.frames):
        env.step(env.action_space.sample())
        frames.append(env.render())
    frames = np.stack(frames)
    sweep = chunk_sweep(reward_model, frames, args.chunk_sizes)
    rule = cartpole.choose_chunk_size(0, device)
    runs = {"scripts": [], "authors": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            runs["scripts"].append(end_to_end(reward_model, rule, False, args, folder))
            runs["authors"].append(end_to_end(reward_model, 32, True, args, folder))
    scripts, authors = np.median(runs["scripts"]), np.median(runs["authors"])
    figures = dict(settings=asdict(args), torch_threads=torch.get_num_threads(), chunk_frames_per_s=sweep,
                   cpu_rule_chunk_size=rule, end_to_end_sps=runs, scripts_over_authors=scripts / authors)
    print(f"{args.clip_model}, random weights, {torch.get_num_threads()} torch thread(s)")
    print("| chunk size | " + " | ".join(map(str, sweep)) + " |\n|---|" + "---|" * len(sweep))
    print("| frames/s | " + " | ".join(f"{v:.1f}" for v in sweep.values()) + " |")
    print(f"CartPole end to end, steps/s: the scripts' pipeline (chunk {rule}) {scripts:.1f} "
          f"{[round(v, 1) for v in runs['scripts']]}, the authors' (600x400, resize, batch 32) {authors:.1f} "
          f"{[round(v, 1) for v in runs['authors']]}: {scripts / authors:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main(tyro.cli(Args))
