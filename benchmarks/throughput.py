"""Throughput of the CLIP-reward pipeline: rendering, CLIP, updates, the real training loop, and
how faithful reduced precision stays to fp32.

    python benchmarks/throughput.py --script cartpole --clip-model ViT-B-32 --precision bf16
    python benchmarks/throughput.py --script humanoid --clip-model ViT-bigG-14 --num-envs 32 --batch-size 256 --json bigg.json

CLIP weights are random (cost does not depend on them), so nothing is downloaded. `--clip-model`
takes an open_clip architecture name or an open_clip model config file (.json).
"""

import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import tyro
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense peak TFLOP/s of devices we know (per precision), to say how close CLIP runs to the limit.
PEAK_TFLOPS = {"H200": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
               "H100": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0},
               "A100": {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0},
               "RTX 4090": {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2}}


@dataclass
class Args:
    script: Literal["cartpole", "mountaincar", "humanoid"] = "cartpole"
    """which training script's environment, renderer, agent and loop to measure"""
    clip_model: str = "ViT-B-32"
    """open_clip architecture name, or the path of an open_clip model config (.json); random weights"""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """CLIP image-encoder precision for the speed figures (fidelity is reported for all three)"""
    batch_size: int = 32
    """frames per CLIP forward pass (also the training loop's `--clip-batch-size`)"""
    num_envs: int = 1
    """environments for the rendering and end-to-end figures"""
    frames: int = 64
    """frames rendered and scored for the CLIP and fidelity figures"""
    steps: int = 400
    """environment steps of the end-to-end run (learning starts half way)"""
    cuda: bool = True
    """if toggled, CUDA is used when available"""
    json: str | None = None
    """write the figures to this JSON file"""


def load_script(name: str):
    module = {"cartpole": "dqn_clip_cartpole", "mountaincar": "sac_clip_mountaincar", "humanoid": "sac_clip_humanoid"}
    return __import__(module[name])


def build_reward(module, args, device):
    name = module.resolve_clip_model(args.clip_model)
    model = open_clip.create_model(name, device=device).eval().requires_grad_(False)
    defaults = module.Args()
    return module.CLIPReward(model, open_clip.get_tokenizer(name), defaults.prompt, defaults.baseline_prompt, 0.5,
                             device=device, batch_size=args.batch_size)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_rendering(module, frame_size, args):
    """Frames per second of one env (step + render) and of `num_envs` envs in the vector env."""
    env = module.make_env(50, frame_size)()
    env.reset(seed=0)
    start = time.perf_counter()
    rendered = []
    for _ in range(args.frames):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        rendered.append(info["frame"])
        if terminated or truncated:
            env.reset()
    per_env = args.frames / (time.perf_counter() - start)
    env.close()
    return np.stack(rendered), per_env


def measure_clip(reward_model, frames, device):
    """Frames per second (preprocessing included) and FLOPs per frame of the image encoder."""
    reward_model(frames[: reward_model.batch_size])  # warm-up
    sync(device)
    start = time.perf_counter()
    reward_model(frames)
    sync(device)
    fps = len(frames) / (time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        reward_model.embed_images(frames[:1])
    return fps, counter.get_total_flops()


def measure_fidelity(module, reward_model, frames):
    """Per precision: embedding cosine to fp32 (min, mean), reward error against the fp32 spread, Spearman."""
    rows = {row["precision"]: row for row in module.measure_precisions(reward_model, frames)}
    reference = reward_model.embed_images(frames)
    figures = {}
    for precision, row in rows.items():
        with contextlib.suppress(RuntimeError):
            cast = copy.deepcopy(reward_model).cast(precision)
            cosine = F.cosine_similarity(cast.embed_images(frames), reference, dim=-1)
            figures[precision] = dict(cosine_min=cosine.min().item(), cosine_mean=cosine.mean().item(),
                                      max_reward_error=row["max_error"], reward_spread=row["spread"],
                                      error_over_spread=row["max_error"] / max(row["spread"], 1e-12),
                                      spearman=row["spearman"], faithful=row["faithful"])
    return figures


def measure_training(module, reward_model, args, folder):
    """The real loop: steps per second, the share of each phase, and updates per second."""
    settings = dict(clip_model="unused", total_timesteps=args.steps, learning_starts=args.steps // 2,
                    num_envs=args.num_envs, eval_episodes=1, clip_batch_size=args.batch_size, output_dir=folder,
                    clip_precision=reward_model.precision, cuda=args.cuda)
    if args.script != "humanoid":
        settings["landscape_points"] = 5
    run_args = module.Args(**settings)
    start = time.perf_counter()
    result = module.main(run_args, reward_model=reward_model)
    wall = time.perf_counter() - start
    loop_seconds = result["global_step"] / result["sps"]  # the training loop, without the final evaluation
    shares = {phase: seconds / loop_seconds for phase, seconds in result["timings"].items()}
    return dict(sps=result["sps"], wall_seconds=wall, phase_share=shares,
                updates_per_second=result["gradient_steps_done"] / max(result["timings"]["updates"], 1e-9))


def main(args: Args) -> dict:
    module = load_script(args.script)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    reward_model = build_reward(module, args, device)
    frames, render_fps = measure_rendering(module, reward_model.image_size, args)
    fidelity = measure_fidelity(module, reward_model, frames)
    reward_model.cast(args.precision)
    clip_fps, flops_per_frame = measure_clip(reward_model, frames, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((p[args.precision] for key, p in PEAK_TFLOPS.items() if key in device_name), None)
    with tempfile.TemporaryDirectory() as folder:
        training = measure_training(module, reward_model, args, folder)
    figures = dict(
        settings=asdict(args), device=device_name, torch_threads=torch.get_num_threads(),
        render_fps_per_env=render_fps, render_fps_total=render_fps * args.num_envs,
        clip_fps=clip_fps, clip_gflop_per_frame=flops_per_frame / 1e9,
        clip_tflops_achieved=clip_fps * flops_per_frame / 1e12, device_peak_tflops=peak,
        clip_fraction_of_peak=(clip_fps * flops_per_frame / 1e12 / peak) if peak else None,
        updates_per_second=training["updates_per_second"], end_to_end_sps=training["sps"],
        end_to_end_over_clip_only=training["sps"] / clip_fps, phase_share=training["phase_share"],
        fidelity=fidelity,
    )
    print(f"{args.script}, {args.clip_model} ({figures['clip_gflop_per_frame']:.1f} GFLOP/frame), {args.precision}, "
          f"batch {args.batch_size}, {args.num_envs} env(s), device {device_name}")
    print("| figure | value |\n|---|---|")
    for label, value in [("rendering, frames/s per env", f"{render_fps:.0f}"),
                         ("CLIP, frames/s (preprocessing included)", f"{clip_fps:.1f}"),
                         ("CLIP, achieved TFLOP/s", f"{figures['clip_tflops_achieved']:.3f}"),
                         ("CLIP, share of device peak", f"{figures['clip_fraction_of_peak']:.0%}" if peak else "peak unknown"),
                         ("updates/s", f"{training['updates_per_second']:.0f}"),
                         ("end-to-end steps/s", f"{training['sps']:.1f}"),
                         ("end-to-end / CLIP-only", f"{figures['end_to_end_over_clip_only']:.0%}")]:
        print(f"| {label} | {value} |")
    print("| phase share of the loop | " + ", ".join(f"{k} {v:.0%}" for k, v in training["phase_share"].items()) + " |")
    for precision, row in fidelity.items():
        print(f"| fidelity {precision} | cosine min {row['cosine_min']:.6f}, reward error {row['max_reward_error']:.2e} "
              f"= {row['error_over_spread']:.0%} of spread {row['reward_spread']:.2e}, Spearman {row['spearman']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main(tyro.cli(Args))
