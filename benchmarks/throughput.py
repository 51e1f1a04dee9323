"""Throughput of the CLIP-reward pipeline: rendering, CLIP, updates, the real training loop, and
how faithful reduced precision (autocast) stays to fp32.

    python benchmarks/throughput.py --script cartpole --clip-model ViT-B-32 --precision bf16
    python benchmarks/throughput.py --script humanoid --clip-model ViT-bigG-14 --num-envs 32 --batch-size 256 --json bigg.json

CLIP weights are random (cost does not depend on them), so nothing is downloaded. `--clip-model`
takes an open_clip architecture name or an open_clip model config file (.json).

Fidelity: the same frames are scored in fp32, bf16 and fp16 (autocast around the image encoder, as
the training scripts run it). A precision is *faithful* when its largest reward error is at most 5%
of the spread of the fp32 rewards over those frames (max - min): errors small against the reward
differences the agent has to see. Random weights give a different spread than trained ones, so take
the verdict as a guide to the arithmetic, and re-check with the real weights before relying on it.
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import tyro
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward_stats import spearman  # noqa: E402

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
    """CLIP image-encoder precision (autocast) for the speed figures (fidelity is reported for all three)"""
    batch_size: int = 32
    """frames per CLIP forward pass (the reward's `chunk_size`; also the training loop's `--clip-chunk-size`)"""
    num_envs: int = 1
    """environments for the rendering and end-to-end figures"""
    frames: int = 64
    """frames rendered and scored for the CLIP and fidelity figures"""
    steps: int = 400
    """environment steps of the end-to-end run (learning starts half way)"""
    fast_render: bool = False
    """humanoid only: the scene without shadows and multisampling, as the script's `--fast-render`"""
    cuda: bool = True
    """if toggled, CUDA is used when available"""
    json: str | None = None
    """write the figures to this JSON file"""


def load_script(name: str):
    module = {"cartpole": "dqn_clip_cartpole", "mountaincar": "sac_clip_mountaincar", "humanoid": "sac_clip_humanoid"}
    return __import__(module[name])


def build_reward(module, args, device):
    name = args.clip_model
    if name.endswith(".json"):  # an open_clip model config, known by its file name (as the scripts do)
        open_clip.add_model_config(name)
        name = os.path.splitext(os.path.basename(name))[0]
    model = open_clip.create_model(name, device=device).eval().requires_grad_(False)
    defaults = module.Args()
    # The humanoid's default prompt is its --task's (an empty tuple stands for it).
    prompt = defaults.prompt or (module.TASKS[defaults.task].prompt,)
    return module.CLIPReward(model, open_clip.get_tokenizer(name), prompt, defaults.baseline_prompt, 0.5,
                             device=device, chunk_size=args.batch_size, precision=args.precision)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_rendering(module, frame_size, args):
    """One env: the frames it renders, frames per second (rendering alone) and steps per second (simulation
    alone, without rendering)."""
    env = module.make_env(50, frame_size, **scene_flags(args))()
    env.reset(seed=0)
    rendered, simulation, rendering = [], 0.0, 0.0
    for _ in range(args.frames):
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        middle = time.perf_counter()
        rendered.append(env.render())
        simulation, rendering = simulation + middle - start, rendering + time.perf_counter() - middle
        if terminated or truncated:
            env.reset()
    env.close()
    return np.stack(rendered), args.frames / rendering, args.frames / simulation


def scene_flags(args) -> dict:
    """The humanoid's --fast-render, for its renderer and its training run."""
    return dict(fast_render=True) if args.fast_render else {}


def measure_updates(module, device, count: int = 20) -> float:
    """Gradient steps per second of the script's update with its default network and batch sizes."""
    defaults = module.Args()
    env = module.make_env(50)()
    obs_dim, action_space = env.observation_space.shape[0], env.action_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    rb = module.ReplayBuffer(1000, obs_dim, action_space.shape, np.int64 if discrete else np.float32, device)
    for _ in range(1000 // 10):
        actions = np.array([action_space.sample() for _ in range(10)])
        rb.add(np.random.randn(10, obs_dim), np.random.randn(10, obs_dim), actions, np.random.rand(10), 0.0, 0.0)
    if discrete:  # DQN
        q_network = module.QNetwork(obs_dim, action_space.n, defaults.hidden_size).to(device)
        target, optimizer = module.QNetwork(obs_dim, action_space.n, defaults.hidden_size).to(device), \
            torch.optim.Adam(q_network.parameters(), lr=defaults.learning_rate)
        update = lambda: module.dqn_update(q_network, target, optimizer, rb.sample(defaults.batch_size),  # noqa: E731
                                           defaults.gamma, defaults.max_grad_norm)
    else:  # SAC
        agent = module.SoftActorCritic(env.observation_space, action_space, defaults, device)
        update = lambda: agent.update(*rb.sample(defaults.batch_size))  # noqa: E731
    update()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(count):
        update()
    sync(device)
    return count / (time.perf_counter() - start)


def measure_clip(reward_model, frames, device):
    """Frames per second (preprocessing included) and FLOPs per frame of the image encoder."""
    reward_model(frames[: reward_model.chunk_size])  # warm-up
    sync(device)
    start = time.perf_counter()
    reward_model(frames)
    sync(device)
    fps = len(frames) / (time.perf_counter() - start)
    counter = FlopCounterMode(display=False)
    with counter:
        reward_model.embed_images(frames[:1])
    return fps, counter.get_total_flops()


FAITHFUL_TOLERANCE = 0.05  # a precision is faithful when its reward error <= 5% of the fp32 reward spread


def unsupported_dtype(error: BaseException) -> bool:
    """True for the errors that mean "this device has no kernel for this dtype", nothing else (never an
    out-of-memory: a chunk too large for the device must stop the benchmark, not hide a precision)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return False
    if isinstance(error, NotImplementedError):
        return True
    message = str(error)  # e.g. '"addmm_impl_cpu_" not implemented for 'Half'', or cuBLAS without bf16 GEMMs
    return isinstance(error, RuntimeError) and ("not implemented for" in message
                                                or "CUBLAS_STATUS_NOT_SUPPORTED" in message)


def score(reward_model, frames, device):
    """Unit embeddings and rewards of `frames` in the reward model's current precision, in passes of
    `chunk_size` frames as in training, and the seconds per frame (after a warm-up pass)."""
    reward_model.embed_images(frames[: reward_model.chunk_size])  # warm-up: kernel selection, lazy init
    sync(device)
    start = time.perf_counter()
    embeddings = torch.cat([reward_model.embed_images(frames[i: i + reward_model.chunk_size])
                            for i in range(0, len(frames), reward_model.chunk_size)])
    sync(device)
    seconds = (time.perf_counter() - start) / len(frames)
    return embeddings, reward_model.rewards_from_embeddings(embeddings).cpu().numpy(), seconds


def measure_fidelity(reward_model, frames, device, precisions=("fp32", "bf16", "fp16")):
    """Per precision, the same frames scored with `reward_model.precision = p` (autocast): embedding
    cosine to fp32 (min, mean), largest reward error, fp32 reward spread, error / spread, Spearman
    rank correlation of the rewards, `faithful` (error <= 5% of the spread), seconds and frames per second.

    A precision this device has no kernel for is left out. The reward model's precision is restored.
    """
    restore = reward_model.precision
    figures = {}
    try:
        reward_model.precision = "fp32"
        reference_scores = score(reward_model, frames, device)
        reference, reference_rewards, _ = reference_scores
        spread = float(reference_rewards.max() - reference_rewards.min())
        for precision in precisions:
            reward_model.precision = precision
            try:
                embeddings, rewards, seconds = (reference_scores if precision == "fp32"
                                                else score(reward_model, frames, device))
            except (RuntimeError, NotImplementedError) as error:
                if not unsupported_dtype(error):
                    raise
                print(f"fidelity: {precision} skipped on {device.type} ({str(error).splitlines()[0][:120]})")
                continue
            cosine = F.cosine_similarity(embeddings, reference, dim=-1)
            error = float(np.abs(rewards - reference_rewards).max())
            figures[precision] = dict(cosine_min=cosine.min().item(), cosine_mean=cosine.mean().item(),
                                      max_reward_error=error, reward_spread=spread,
                                      error_over_spread=error / max(spread, 1e-12),
                                      spearman=spearman(rewards, reference_rewards),
                                      faithful=error <= FAITHFUL_TOLERANCE * spread,
                                      seconds_per_frame=seconds, frames_per_second=1.0 / seconds)
    finally:
        reward_model.precision = restore
    return figures


def measure_training(module, reward_model, args, folder):
    """The real loop's steps per second.

    The script's updates per transition (gradient-steps / train-frequency) are kept, in phases short
    enough that several fit in the second half of the run (the paper's phases are 1,600 to 3,200 transitions).
    """
    defaults = module.Args()
    phase = min(defaults.train_frequency, max(args.steps // 8, 1))
    updates = max(1, round(defaults.gradient_steps * phase / defaults.train_frequency))
    settings = dict(clip_model="unused", total_timesteps=args.steps, learning_starts=args.steps // 2,
                    train_frequency=phase, gradient_steps=updates,
                    num_envs=args.num_envs, eval_episodes=1, clip_chunk_size=args.batch_size, output_dir=folder,
                    clip_precision=reward_model.precision, cuda=args.cuda)
    if args.script != "humanoid":
        settings["landscape_points"] = 5
    else:  # the action baselines run before the clock starts: they take no part in the figure
        settings.update(baseline_episodes=0, **scene_flags(args))
    run_args = module.Args(**settings)
    # The humanoid evaluates its greedy policy as soon as learning starts, inside the training the script times:
    # in a run of a few hundred steps that evaluation would be a large share, in a real run it is not. Its time
    # is taken out (the last evaluation is the final one, after the script took its speed).
    evaluations, evaluate_and_log = [], getattr(module, "evaluate_and_log", None)
    if evaluate_and_log is not None:
        def timed(*call, **keywords):
            began = time.perf_counter()
            try:
                return evaluate_and_log(*call, **keywords)
            finally:
                evaluations.append(time.perf_counter() - began)
        module.evaluate_and_log = timed
    start = time.perf_counter()
    try:
        result = module.main(run_args, reward_model=reward_model)
    finally:
        if evaluate_and_log is not None:
            module.evaluate_and_log = evaluate_and_log
    periodic = sum(evaluations[:-1])
    training_seconds = result["global_step"] / result["sps"] - periodic
    return dict(sps=result["global_step"] / training_seconds, wall_seconds=time.perf_counter() - start,
                updates_per_transition=updates / phase, periodic_evaluation_seconds=periodic)


def main(args: Args) -> dict:
    if args.fast_render and args.script != "humanoid":
        raise SystemExit(f"error: --fast-render is the humanoid's (got --script {args.script}); allowed: --script humanoid.")
    module = load_script(args.script)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    reward_model = build_reward(module, args, device)
    frames, render_fps, simulation_sps = measure_rendering(module, reward_model.image_size, args)
    updates_per_second = measure_updates(module, device)
    fidelity = measure_fidelity(reward_model, frames, device)
    reward_model.precision = args.precision
    clip_fps, flops_per_frame = measure_clip(reward_model, frames, device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((p[args.precision] for key, p in PEAK_TFLOPS.items() if key in device_name), None)
    with tempfile.TemporaryDirectory() as folder:
        training = measure_training(module, reward_model, args, folder)
    # Seconds per transition of each phase, each measured alone: their shares of a loop that runs them one
    # after the other, as the scripts do (they keep no timers themselves).
    seconds = dict(simulation=1 / simulation_sps, rendering=1 / render_fps, clip=1 / clip_fps,
                   updates=training["updates_per_transition"] / updates_per_second)
    phase_share = {phase: value / sum(seconds.values()) for phase, value in seconds.items()}
    figures = dict(
        settings=asdict(args), device=device_name, torch_threads=torch.get_num_threads(),
        render_fps_per_env=render_fps, render_fps_total=render_fps * args.num_envs,
        clip_fps=clip_fps, clip_gflop_per_frame=flops_per_frame / 1e9,
        clip_tflops_achieved=clip_fps * flops_per_frame / 1e12, device_peak_tflops=peak,
        clip_fraction_of_peak=(clip_fps * flops_per_frame / 1e12 / peak) if peak else None,
        simulation_sps_per_env=simulation_sps, updates_per_second=updates_per_second, end_to_end_sps=training["sps"],
        periodic_evaluation_seconds=training["periodic_evaluation_seconds"],
        end_to_end_over_clip_only=training["sps"] / clip_fps, phase_share=phase_share,
        fidelity=fidelity,
    )
    print(f"{args.script}, {args.clip_model} ({figures['clip_gflop_per_frame']:.1f} GFLOP/frame), {args.precision}, "
          f"batch {args.batch_size}, {args.num_envs} env(s), device {device_name}")
    print("| figure | value |\n|---|---|")
    for label, value in [("rendering, frames/s per env", f"{render_fps:.0f}"),
                         ("CLIP, frames/s (preprocessing included)", f"{clip_fps:.1f}"),
                         ("CLIP, achieved TFLOP/s", f"{figures['clip_tflops_achieved']:.3f}"),
                         ("CLIP, share of device peak", f"{figures['clip_fraction_of_peak']:.0%}" if peak else "peak unknown"),
                         ("simulation, steps/s per env (no rendering)", f"{simulation_sps:.0f}"),
                         ("updates/s", f"{updates_per_second:.0f}"),
                         ("end-to-end steps/s", f"{training['sps']:.1f}"),
                         ("end-to-end / CLIP-only", f"{figures['end_to_end_over_clip_only']:.0%}")]:
        print(f"| {label} | {value} |")
    print("| phase share (each phase timed alone) | " + ", ".join(f"{k} {v:.0%}" for k, v in phase_share.items()) + " |")
    for precision, row in fidelity.items():
        print(f"| fidelity {precision} | cosine min {row['cosine_min']:.6f}, reward error {row['max_reward_error']:.2e} "
              f"= {row['error_over_spread']:.0%} of spread {row['reward_spread']:.2e}, Spearman {row['spearman']:.2f}, "
              f"{'faithful' if row['faithful'] else 'NOT faithful'}, {row['frames_per_second']:.1f} frames/s |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main(tyro.cli(Args))
