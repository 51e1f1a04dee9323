"""The humanoid's scene as CLIP sees it: each of the paper's eight tasks in its hand-built pose, one row of frames.

    python benchmarks/scene_row.py --out docs/scene_row.png

Each frame is what `sac_clip_humanoid.py` renders for CLIP (the realistic scene, the paper's camera, shadows and
multisampling, at `--size`, by default ViT-bigG-14's 224 x 224), labelled with its task and whether the task's
pose detector calls it in the pose. `--fast-render` and `--no-textured` show the other scenes the script offers.
"""

import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_clip_humanoid as humanoid  # noqa: E402  (chooses MuJoCo's OpenGL backend before mujoco is imported)


@dataclass
class Args:
    out: str = "scene_row.png"
    """the PNG to write"""
    size: int = 224
    """height and width of each frame (CLIP's input size)"""
    textured: bool = True
    """if toggled, the realistic scene; `--no-textured`: gymnasium's stock look"""
    fast_render: bool = False
    """if toggled, no shadows and no multisampling (the script's --fast-render)"""


def scene_row(args: Args) -> np.ndarray:
    """(size, 8 x size, 3) uint8: the eight tasks' hand-built poses, left to right in TASKS' order."""
    from PIL import Image, ImageDraw

    env = humanoid.CLIPHumanoidEnv((args.size, args.size), args.textured, "paper", fast_render=args.fast_render)
    tiles = []
    for task in humanoid.TASKS:
        humanoid.set_pose(env, *humanoid.path_pose(task, 1.0))
        tile = Image.fromarray(env.render())
        detected = humanoid.in_pose(humanoid.pose_features(env.data), task)
        ImageDraw.Draw(tile).text((4, 4), task + ("" if detected else " (detector: no)"), fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    env.close()
    return np.concatenate(tiles, axis=1)


def main(args: Args) -> np.ndarray:
    from PIL import Image

    humanoid.require_gl()
    row = scene_row(args)
    Image.fromarray(row).save(args.out)
    print(f"wrote {args.out}: {len(humanoid.TASKS)} frames of {args.size} x {args.size}")
    return row


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
