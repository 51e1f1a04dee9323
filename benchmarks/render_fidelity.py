"""How close the humanoid's frames are to the authors', and what each way of rendering them costs.

    python benchmarks/render_fidelity.py --frames 300 --sheet render_sheet.png --json render.json

The authors rendered their scene at 480x480 with MuJoCo's visual defaults (the overhead light casts
shadows, the offscreen buffer multisamples 4x) and resized each frame to CLIP's input, bicubic, on the
frame scaled to [0, 1] (the preprocessing CLIPReward applies to frames of another size). That resized
frame is the reference here. Each candidate renders the same states of random-action episodes from the
start state; the benchmark prints, per candidate, the mean absolute pixel error against the reference
(0-255 scale), the PSNR (dB, on [0, 1] frames) and the render speed on this machine (frames/s, one env,
resize included where a candidate resizes). `--sheet` writes a contact sheet: one row per candidate,
the robot standing, kneeling (the hand-built pose of the kneeling task) and fallen (the end of a
zero-action episode).
"""

import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_clip_humanoid as humanoid  # noqa: E402  (chooses MuJoCo's OpenGL backend before mujoco is imported)


@dataclass
class Args:
    frames: int = 300
    """states to render (random-action episodes of 100 steps from the start state)"""
    size: int = 224
    """CLIP's input size (height = width), e.g. 224 for ViT-B-32 and ViT-bigG-14"""
    reference_size: int = 480
    """the size the authors rendered at before resizing"""
    seed: int = 0
    """seed of the random actions"""
    sheet: str | None = None
    """if given, a PNG contact sheet of standing, kneeling and fallen frames, one row per candidate"""
    json: str | None = None
    """if given, the figures are also written to this JSON file"""


# (name, rendered size, shadows, 4x multisampling): every candidate ends at CLIP's input size.
def candidates(args: Args):
    return [("480 -> resize, shadows + 4x MSAA (reference)", args.reference_size, True, True),
            ("direct, shadows + 4x MSAA (default)", args.size, True, True),
            ("direct, shadows, no MSAA", args.size, True, False),
            ("direct, --fast-render (no shadows, no MSAA)", args.size, False, False),
            ("480 -> resize, --fast-render", args.reference_size, False, False)]


def make_env(size: int, shadows: bool, msaa: bool):
    """The script's textured scene and paper camera at size x size. Shadows without multisampling is a scene the
    script does not offer (--fast-render turns both off): set on the model before its render context exists."""
    env = humanoid.CLIPHumanoidEnv((size, size), fast_render=not shadows)
    if shadows and not msaa:
        env.model.vis.quality.offsamples = 0
    return env


def resize(frames: np.ndarray, size: int) -> np.ndarray:
    """The authors' resize: uint8 -> [0, 1] -> bicubic to size x size (float frames, not rounded)."""
    x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def random_action_states(count: int, seed: int) -> list:
    env = humanoid.CLIPHumanoidEnv((64, 64), fast_render=True)  # simulation only
    env.reset(seed=seed)
    env.action_space.seed(seed)
    states = []
    while len(states) < count:
        if len(states) % 100 == 0:
            env.reset()
        env.step(env.action_space.sample())
        states.append((env.data.qpos.copy(), env.data.qvel.copy()))
    env.close()
    return states


def sheet_states() -> list:
    env = humanoid.CLIPHumanoidEnv((64, 64), fast_render=True)
    env.reset(seed=0)
    standing = (env.data.qpos.copy(), env.data.qvel.copy())
    humanoid.set_pose(env, humanoid.TASKS["kneeling"].pose, humanoid.TASKS["kneeling"].pitch)
    kneeling = (env.data.qpos.copy(), env.data.qvel.copy())
    env.reset(seed=0)
    for _ in range(100):  # zero actions: the robot collapses and falls
        env.step(np.zeros(env.action_space.shape))
    fallen = (env.data.qpos.copy(), env.data.qvel.copy())
    env.close()
    return [standing, kneeling, fallen]


def render_all(env, states, size: int) -> tuple[np.ndarray, float]:
    """Frames of the states at CLIP's input size (floats in [0, 1]) and frames per second (render and resize)."""
    env.set_state(*states[0])
    env.render()  # the first frame sets up the context
    frames, start = [], time.perf_counter()
    for qpos, qvel in states:
        env.set_state(qpos, qvel)
        frames.append(env.render())
    out = resize(np.stack(frames), size)
    return out, len(states) / (time.perf_counter() - start)


def main(args: Args) -> dict:
    humanoid.require_gl()
    states, shown = random_action_states(args.frames, args.seed), sheet_states()
    rows, figures, reference = [], [], None
    for name, rendered, shadows, msaa in candidates(args):
        env = make_env(rendered, shadows, msaa)
        frames, fps = render_all(env, states, args.size)
        if reference is None:
            reference = frames
            quantised = np.round(frames * 255) / 255  # as a uint8 frame would hold it
            mae, psnr = 255 * np.abs(quantised - reference).mean(), np.inf
        else:
            mae = 255 * np.abs(frames - reference).mean()
            psnr = 10 * np.log10(1.0 / np.mean((frames - reference) ** 2))
        figures.append(dict(candidate=name, rendered=rendered, shadows=shadows, msaa=msaa, frames_per_second=fps,
                            mean_abs_error=float(mae), psnr_db=float(psnr)))
        rows.append(render_all(env, shown, args.size)[0])
        env.close()
    print(f"{args.frames} states of random-action episodes, frames at {args.size}x{args.size}, "
          f"reference: {candidates(args)[0][0]}")
    print(f"| rendering | frames/s (one env, this CPU) | mean abs error (0-255) | PSNR (dB) |\n|---|---|---|---|")
    for f in figures:
        print(f"| {f['candidate']} | {f['frames_per_second']:.1f} | {f['mean_abs_error']:.2f} | {f['psnr_db']:.1f} |")
    if args.sheet:
        from PIL import Image, ImageDraw

        sheet = Image.fromarray((np.concatenate([np.concatenate(list(row), axis=1) for row in rows]) * 255)
                                .round().astype(np.uint8))
        draw = ImageDraw.Draw(sheet)
        for i, (name, *_) in enumerate(candidates(args)):
            draw.text((4, i * args.size + 4), name, fill=(255, 255, 255))
        sheet.save(args.sheet)
        print(f"wrote {args.sheet} (columns: standing, kneeling, fallen)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return {f["candidate"]: f for f in figures}


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
