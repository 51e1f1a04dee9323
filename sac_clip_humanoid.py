"""SAC on the MuJoCo Humanoid with a CLIP reward model (VLM-RM): a humanoid taught by one sentence.

Reproduces the headline experiment of "Vision-Language Models are Zero-Shot Reward Models for
Reinforcement Learning" (Rocamonde et al., ICLR 2024). The humanoid never sees a hand-written
reward: every state it reaches is rendered in a realistic scene (sky, stone floor, a brushed-metal
robot, a camera in front of it), embedded by CLIP and compared with the embedding of a sentence
("a humanoid robot kneeling"), sharpened by a baseline sentence ("a humanoid robot") through
goal-baseline projection with weight alpha.

    python sac_clip_humanoid.py --task kneeling --alpha 0.5      # the paper's prompt for the task
    python sac_clip_humanoid.py --task lotus-position
    python sac_clip_humanoid.py --task kneeling --prompt "a robot on its knees"   # your prompt, judged as kneeling
    python sac_clip_humanoid.py --task arms-raised --reward pose   # privileged baseline: trained on the pose detector
    python sac_clip_humanoid.py --no-textured --camera stock        # the paper's ablation: stock scene
    python sac_clip_humanoid.py --reward ground-truth --episode-length 1000   # the SAC half alone

Success is the paper's: in the goal pose for at least half of the episode. The paper asked a person;
here pose detectors (a few thresholds on body-part positions, one set per task) judge every step.

Read top to bottom: the choice of a headless OpenGL backend, arguments, the environment (the
paper's changes, a generated scene and camera), the pose detectors, the CLIP reward, the replay buffer and the queue
that batches frames through CLIP, SAC, evaluation with image strips, then the training loop.
"""

import atexit
import json
import functools
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple

import numpy as np


def choose_gl_backend() -> str | None:
    """Headless MuJoCo rendering: EGL (a GPU, or Mesa's software EGL on a CPU), else OSMesa.

    MuJoCo reads MUJOCO_GL when it is imported, so this runs first. Each backend is tried in a
    subprocess (a failed OpenGL start can abort a process). A MUJOCO_GL set by the user is kept.
    Returns the backend, or None when none works (the error comes when a frame is needed).
    """
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    probe = "import mujoco; context = mujoco.GLContext(16, 16); context.make_current(); context.free()"
    for backend in ("egl", "osmesa"):
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        try:
            ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok:
            os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    os.environ["MUJOCO_GL"] = "disable"  # import mujoco without any OpenGL; simulation still works
    return None


GL_BACKEND = choose_gl_backend()


def require_gl():
    """Stop with one sentence where a frame is needed and no headless OpenGL works here."""
    if GL_BACKEND is None:
        fail("no headless OpenGL for MuJoCo: install EGL or OSMesa (Debian: apt-get install libegl1 "
             "libgl1-mesa-dri, or libosmesa6) or set MUJOCO_GL to a backend that works here.")

import gymnasium as gym  # noqa: E402  (after MUJOCO_GL is set)
import mujoco  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import tyro  # noqa: E402
from gymnasium.envs.mujoco.humanoid_v5 import DEFAULT_CAMERA_CONFIG, HumanoidEnv  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


# The paper's eight humanoid tasks (its Table 1); TASKS, below the environment, gives each its prompt and pose detector.
TaskName = Literal["kneeling", "lotus-position", "standing-up", "arms-raised", "doing-splits", "hands-on-hips",
                   "arms-crossed", "standing-on-one-leg"]


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, CUDA is used when available (CLIP and the SAC networks)"""
    output_dir: str = "runs"
    """folder that receives `<run name>/` with TensorBoard logs, image strips, videos and the model"""
    capture_video: bool = False
    """if toggled, a deterministic evaluation episode is saved as a GIF with the CLIP reward drawn on it"""
    video_interval: int = 500_000
    """transitions between two evaluations (image strip; GIF with `--capture-video`)"""
    save_model: bool = False
    """if toggled, the actor and critic weights are saved to `<run>/<exp name>.cleanrl_model`"""

    # Reward
    task: TaskName = "kneeling"
    """the paper's task: its goal prompt (unless `--prompt` is given) and the pose detector that judges success"""
    reward: Literal["clip", "pose", "ground-truth"] = "clip"
    """`clip`: the CLIP reward; `pose`: the task's pose detector, graded (a privileged baseline, no CLIP); `ground-truth`: gymnasium's Humanoid reward (walking), with its termination"""
    prompt: Annotated[tuple[str, ...], tyro.conf.arg(help_behavior_hint="(default: the paper's prompt for --task)")] = ()
    """goal prompt(s), averaged into one goal embedding"""
    baseline_prompt: tuple[str, ...] = ("a humanoid robot",)
    """baseline prompt(s) for goal-baseline projection; several are averaged"""
    alpha: float = 0.0
    """goal-baseline projection weight in [0, 1]: 0 = cosine similarity to the goal, 1 = only the goal-baseline direction counts"""
    clip_model: str = "ViT-bigG-14"
    """open_clip architecture name (e.g. RN50, ViT-B-32, ViT-L-14, ViT-H-14, ViT-bigG-14)"""
    clip_pretrained: str = "laion2b_s39b_b160k"
    """open_clip pretrained tag of `--clip-model`, or the path of a local checkpoint file"""
    clip_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """CLIP image-encoder precision (autocast for bf16/fp16); `auto`: fp16 on a GPU (the authors' autocast), fp32 on a CPU"""
    clip_batch_size: int = 800
    """frames queued before CLIP scores them together, in the background while the envs step (paper: 3200, one rollout, scored after it; a quarter of it lets CLIP overlap the simulation)"""
    clip_chunk_size: int = 256
    """most frames per CLIP forward pass (bounds GPU memory: 256 frames of ViT-bigG-14 need ~3 GB of fp16 activations; README, "Speed")"""

    # Environment
    textured: bool = True
    """if toggled, the realistic scene (sky, stone floor, brushed-metal robot); `--no-textured`: gymnasium's stock look"""
    camera: Literal["paper", "stock"] = "paper"
    """`paper`: fixed in front of the robot (distance 3.5, look-at (0, 0, 1), elevation -10°, azimuth 180°); `stock`: gymnasium's"""
    num_envs: int = 32
    """the number of parallel environments (paper: 32)"""
    episode_length: int = 100
    """steps per episode; with the CLIP reward episodes end only by this time limit (truncation, bootstrapped)"""

    # SAC: the paper's humanoid runs, i.e. the authors' config run through SB3: 32 envs, 100 gradient steps
    # every 100 vector steps (3,200 transitions). Every step count here is in transitions (summed over
    # envs), so the updates per transition (1/32) stay the paper's for any --num-envs.
    total_timesteps: int = 10_000_000
    """total environment steps (transitions, summed over all envs)"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.95
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak update of the target critics after every gradient step)"""
    batch_size: int = 512
    """the batch size of samples from the replay memory"""
    learning_starts: int = 50_000
    """transitions collected before learning starts (random actions until then)"""
    learning_rate: float = 6e-4
    """the learning rate of the actor, critics and entropy coefficient"""
    train_frequency: int = 3200
    """transitions (summed over envs) between two training phases (paper: 100 vector steps of 32 envs)"""
    gradient_steps: int = 100
    """gradient steps per training phase: gradient-steps / train-frequency updates per transition (paper: 100 per 3200)"""
    hidden_size: int = 256
    """width of the two hidden layers of the actor and of each critic"""
    ent_coef: float = 0.1
    """the entropy coefficient when not `--autotune`"""
    autotune: bool = True
    """if toggled, the entropy coefficient is tuned towards a target entropy of -action_dim (SB3's default, which the paper used)"""
    sde: bool = False
    """if toggled, gSDE: exploration noise that is a function of the state, redrawn every `sde-sample-freq` steps"""
    sde_sample_freq: int = 100
    """transitions between two draws of the exploration matrix (with `--sde`)"""
    log_std_init: float = -3.0
    """initial log standard deviation of the exploration weights (with `--sde`)"""
    eval_episodes: int = 4
    """deterministic evaluation episodes at each evaluation and at the end of training (0: no final evaluation)"""
    landscape_points: int = 21
    """poses on the reward landscape's path (standing to the task's pose) scored before training"""


# Allowed values of the numeric flags, checked before anything is loaded.
RANGES = dict(num_envs="[1, inf)", episode_length="[1, inf)", total_timesteps="[1, inf)", learning_rate="(0, inf)",
              buffer_size="[1, inf)", gamma="[0, 1]", tau="(0, 1]", batch_size="[1, inf)", learning_starts="[0, inf)",
              train_frequency="[1, inf)", gradient_steps="[1, inf)", hidden_size="[1, inf)", ent_coef="[0, inf)",
              sde_sample_freq="[1, inf)", log_std_init="(-inf, inf)", eval_episodes="[0, inf)", video_interval="[1, inf)",
              landscape_points="[2, inf)",
              clip_batch_size="[1, inf)", clip_chunk_size="[1, inf)")


# ==== BEGIN SHARED BLOCK: flag-ranges (identical in every script; tests/test_shared_blocks.py) ====
def check_ranges(args, ranges: dict):
    """Stop with one sentence if a numeric flag lies outside its interval, e.g. {"gamma": "[0, 1]"}."""
    for name, interval in ranges.items():
        low, high = (float(bound) for bound in interval[1:-1].split(","))
        value = getattr(args, name)
        above = low <= value if interval[0] == "[" else low < value
        below = value <= high if interval[-1] == "]" else value < high
        if not (above and below):
            fail(f"--{name.replace('_', '-')} must be in {interval}, got {value}.")
# ==== END SHARED BLOCK: flag-ranges ====


# ---------------------------------------------------------------------------------------------
# Environment: gymnasium's Humanoid (v5) as the paper set it up, in a realistic scene
# ---------------------------------------------------------------------------------------------
PAPER_CAMERA = {"distance": 3.5, "lookat": np.array([0.0, 0.0, 1.0]), "elevation": -10.0, "azimuth": 180.0}


# ==== BEGIN SHARED BLOCK: value-noise (identical in every script; tests/test_shared_blocks.py) ====
def value_noise(rng, height: int, width: int, octaves: int = 5, base_cells: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids from coarse to fine, bilinearly upsampled and summed."""
    noise = np.zeros((height, width))
    for octave in range(octaves):
        cells = base_cells * 2 ** octave
        grid = rng.random((cells + 1, cells + 1))
        ys, xs = np.linspace(0, cells, height), np.linspace(0, cells, width)
        y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
        fy, fx = (ys - y0)[:, None], xs - x0
        top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
        bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
        noise += (top * (1 - fy) + bottom * fy) / 2 ** octave
    return (noise - noise.min()) / (noise.max() - noise.min())
# ==== END SHARED BLOCK: value-noise ====


def sky_texture(rng, face: int = 256) -> np.ndarray:
    """A skybox in MuJoCo's 3x4 cross layout: blue sky fading to a pale horizon, soft clouds, grey ground."""
    rows = np.linspace(0, 1, face)[:, None, None]  # 0 at the top of a side face, 1 at the horizon row
    zenith, horizon = np.array([60, 110, 190]), np.array([190, 215, 240])

    def clouds(strength):
        cover = np.clip((value_noise(rng, face, face, base_cells=3) - 0.45) * 2.5, 0, 1)[..., None]
        return cover * strength

    def side():
        upper = zenith + (horizon - zenith) * rows ** 0.7  # upper half of the face: sky
        upper = upper * (1 - clouds(0.8)) + 250 * clouds(0.8)
        lower = np.broadcast_to(horizon * 0.85, (face, face, 3))  # below the horizon: haze, seen past the floor
        image = np.concatenate([upper, lower], axis=0)[::2]  # horizon in the middle of the face
        return np.broadcast_to(image, (face, face, 3))

    up = zenith * (1 - clouds(0.6)) + 250 * clouds(0.6)
    down = np.broadcast_to(np.array([110, 110, 105]), (face, face, 3))
    sheet = np.zeros((3 * face, 4 * face, 3))
    for (row, col), tile in {(0, 1): up, (1, 0): side(), (1, 1): side(), (1, 2): side(), (1, 3): side(),
                             (2, 1): down}.items():
        sheet[row * face: (row + 1) * face, col * face: (col + 1) * face] = tile
    return sheet.clip(0, 255).astype(np.uint8)


def stone_texture(rng, size: int = 512, tiles: int = 4) -> np.ndarray:
    """Square stone tiles of slightly different shades, grainy, with dark grout between them."""
    tile = size // tiles
    shades = rng.uniform(0.8, 1.1, (tiles, tiles))
    shade = np.kron(shades, np.ones((tile, tile)))[..., None]
    grain = 0.75 + 0.5 * value_noise(rng, size, size, base_cells=8)[..., None]
    image = np.array([150, 140, 125]) * shade * grain
    pos = np.arange(size) % tile
    grout = (pos[:, None] < 3) | (pos[None, :] < 3)
    image[grout] = (70, 65, 60)
    return image.clip(0, 255).astype(np.uint8)


def brushed_metal_texture(rng, size: int = 256) -> np.ndarray:
    """Light grey with fine streaks along one direction, as left by brushing."""
    streaks = rng.normal(0, 1, (size, 1)) * 0.5 + rng.normal(0, 1, (size, size)) * 0.15
    streaks = np.cumsum(streaks, axis=1) / np.sqrt(np.arange(1, size + 1))  # stretched along x
    image = 200 + 12 * (streaks - streaks.mean()) / streaks.std()
    return np.repeat(image[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)


def humanoid_xml(textured: bool, frame_size, folder: str) -> str:
    """gymnasium's humanoid.xml, made cheap to render (no shadows, no multisampling) and, with
    `textured`, dressed as in the paper. Writes the model and its textures into `folder`."""
    from PIL import Image

    source = os.path.join(os.path.dirname(gym.envs.mujoco.__file__), "assets", "humanoid.xml")
    root = ET.parse(source).getroot()
    visual = root.find("visual")
    height, width = frame_size
    ET.SubElement(visual, "global", offwidth=str(max(width, 64)), offheight=str(max(height, 64)))
    # Shadows and multisampling cost most of a software-rendered frame; the robot's shape stays.
    ET.SubElement(visual, "quality", shadowsize="0", offsamples="0")
    for light in root.iter("light"):
        light.set("castshadow", "false")
    if textured:
        rng = np.random.default_rng(0)  # the same scene every time
        for name, image in (("sky.png", sky_texture(rng)), ("stone.png", stone_texture(rng)),
                            ("metal.png", brushed_metal_texture(rng))):
            Image.fromarray(image).save(os.path.join(folder, name))
        asset = root.find("asset")
        for element in list(asset):
            asset.remove(element)
        ET.SubElement(asset, "texture", name="sky", type="skybox", file="sky.png", gridsize="3 4",
                      gridlayout=".U..LFRB.D..")
        ET.SubElement(asset, "texture", name="stone", type="2d", file="stone.png")
        ET.SubElement(asset, "texture", name="metal", type="cube", file="metal.png")
        ET.SubElement(asset, "material", name="MatPlane", texture="stone", texrepeat="8 8", reflectance="0",
                      specular="0.1", shininess="0.1")
        ET.SubElement(asset, "material", name="geom", texture="metal", texuniform="true", specular="0.8",
                      shininess="0.5", reflectance="0")
        root.find("default").find("geom").set("rgba", "0.85 0.87 0.9 1")
        for geom in root.iter("geom"):
            if geom.get("name") == "floor":
                geom.set("rgba", "1 1 1 1")
        fog = visual.find("map")  # the stock fog greys out the horizon; the sky should show there
        fog.attrib.pop("fogstart", None)
        fog.attrib.pop("fogend", None)
        ET.SubElement(visual, "headlight", ambient="0.35 0.35 0.35", diffuse="0.5 0.5 0.5")
    path = os.path.join(folder, "humanoid_scene.xml")
    ET.ElementTree(root).write(path)
    return path


@functools.lru_cache(maxsize=None)
def scene_file(textured: bool, frame_size: tuple) -> str:
    """The scene's XML path, written once per process into a temporary folder removed at exit."""
    folder = tempfile.mkdtemp(prefix="vlmrm_humanoid_")
    atexit.register(shutil.rmtree, folder, True)
    return humanoid_xml(textured, frame_size, folder)


# ---------------------------------------------------------------------------------------------
# Ground truth: pose detectors for the paper's eight tasks
# ---------------------------------------------------------------------------------------------
# The paper's success measure was a person watching videos: "in the goal pose for at least half of
# the episode". Here a few geometric features of the robot's body stand in for the person's eyes.
# Heights are in metres above the floor (z = 0); the robot faces +x. For scale, standing upright
# with its feet on the floor: head 1.48, pelvis 0.87, knees 0.42, feet (sphere centres) 0.075;
# an episode starts 0.1 m higher, with the feet in the air, and the robot drops onto them.
# The thresholds were set on poses built by hand and checked by eye, and on random-action rollouts:
# benchmarks/pose_contact_sheet.py shows what each detector accepts and its nearest misses, and
# tests/test_pose.py checks the hand-built poses.
HIP_HALF_WIDTH = 0.16  # the outer side of the hips, from the pelvis's centre (its capsule: half-length 0.07 + radius 0.09)
SUCCESS_FRACTION = 0.5  # the paper's criterion: in the pose for at least half of the episode's steps


def pose_features(data) -> dict[str, float]:
    """Features of the robot's pose from MuJoCo's `data` (positions after mj_forward / a step).

    Points: the head, hands and feet are the centres of their spheres; a knee is the origin of its
    shin body (the knee joint); the torso's axes are its rotation matrix's columns (x forward, y to
    the robot's left, z up along the spine).
    """
    head = data.geom("head").xpos
    hands = {side: data.geom(f"{side}_hand").xpos for side in ("right", "left")}
    feet = [data.geom(f"{side}_foot").xpos for side in ("right", "left")]
    knees = [data.body(f"{side}_shin").xpos for side in ("right", "left")]
    pelvis, pelvis_axes = data.body("pelvis").xpos, data.body("pelvis").xmat.reshape(3, 3)
    torso_position, torso_axes = data.body("torso").xpos, data.body("torso").xmat.reshape(3, 3)
    hips = {"right": pelvis - HIP_HALF_WIDTH * pelvis_axes[:, 1], "left": pelvis + HIP_HALF_WIDTH * pelvis_axes[:, 1]}
    # The direction the hips face, along the floor (none when the pelvis faces up or down: lying).
    facing = pelvis_axes[:, 0] * np.array([1.0, 1.0, 0.0])
    facing = facing / np.linalg.norm(facing) if np.linalg.norm(facing) > 0.1 else np.zeros(3)
    lower_knee = int(knees[1][2] < knees[0][2])  # 0: the right knee, 1: the left
    # How far each hand is to the robot's left of the spine, in the torso's frame (turning or leaning does not change it).
    leftward = {side: float((hand - torso_position) @ torso_axes[:, 1]) for side, hand in hands.items()}
    horizontal = lambda a, b: float(np.linalg.norm((a - b)[:2]))  # noqa: E731
    return dict(
        head_height=float(head[2]),
        pelvis_height=float(pelvis[2]),
        torso_upright=float(torso_axes[2, 2]),  # cosine of the spine's tilt: 1 upright, 0 lying, -1 upside down
        knee_low=float(min(k[2] for k in knees)), knee_high=float(max(k[2] for k in knees)),
        foot_low=float(min(f[2] for f in feet)), foot_high=float(max(f[2] for f in feet)),
        feet_apart=horizontal(*feet),
        knees_apart=horizontal(*knees),
        # How far the foot of the lower knee's leg lies behind that knee, in the direction the hips face: ~0.4
        # when the shin lies on the floor behind the knee (kneeling), negative when it points forward (sitting).
        shin_back=float((knees[lower_knee] - feet[lower_knee]) @ facing),
        feet_to_pelvis=max(horizontal(f, pelvis) for f in feet),  # the farther foot: small when the legs are folded in
        low_hand_above_head=float(min(h[2] for h in hands.values()) - head[2]),
        high_hand_above_head=float(max(h[2] for h in hands.values()) - head[2]),
        hands_to_hips=max(float(np.linalg.norm(hands[side] - hips[side])) for side in hands),  # the farther hand
        # Positive when each hand is past the spine on the other side (the right hand on the left, and the left
        # hand on the right): the smaller of the two crossings, so both arms must cross.
        hands_crossed=min(leftward["right"], -leftward["left"]),
    )


# Each condition: (feature, "<" or ">", threshold, margin). The margin is how far beyond the threshold
# the graded score (pose_score) of the condition falls from 1 to 0; it is chosen to reach about the
# value of a clearly wrong pose, so that the score still says "closer" there.
# The robot's joint limits shape some poses: its hips cannot turn the shins flat onto the floor (no
# true lotus: seated, upright, knees spread, feet drawn in is as close as it gets), its arms cross
# only reaching forwards, and its elbows go back rather than out with the hands on the hips.
STANDING = [
    ("pelvis_height", ">", 0.7, 0.7),  # hips near standing height (0.87); kneeling upright 0.5, a squat ~0.5, sitting 0.15
    ("torso_upright", ">", 0.8, 1.0),  # spine within ~37° of vertical: not bent over, not lying (0)
]


def legs(hip_x=None, hip_z=None, hip_y=None, knee=None) -> dict:
    """The same joint angles (degrees) on both legs; None leaves a joint at the start pose's 0. The left
    leg's axes mirror the right's, so equal angles make a symmetric pose: hip_x < 0 spreads a leg outwards,
    hip_y < 0 lifts the thigh forwards, knee < 0 bends the knee (the shin goes back)."""
    return {f"{side}_{joint}": angle for side in ("right", "left")
            for joint, angle in (("hip_x", hip_x), ("hip_z", hip_z), ("hip_y", hip_y), ("knee", knee))
            if angle is not None}


def arms(shoulder1: float, shoulder2: float, elbow: float) -> dict:
    """Symmetric arms from the right arm's angles (degrees): the left shoulder's axes are the right's
    mirrored, so its angles change sign; the elbow's axis is mirrored and reversed, so its angle stays."""
    return {"right_shoulder1": shoulder1, "right_shoulder2": shoulder2, "right_elbow": elbow,
            "left_shoulder1": -shoulder1, "left_shoulder2": -shoulder2, "left_elbow": elbow}


class Task(NamedTuple):
    prompt: str  # the paper's goal prompt (Table 3); the baseline prompt is "a humanoid robot" for all
    conditions: list  # (feature, "<" or ">", threshold, margin): all must hold for the pose
    # A hand-built example of the pose, the end of the reward landscape's path (which starts at `start`):
    # joint angles in degrees (the rest stay at the standing start pose's) and the trunk's pitch
    # (degrees about the y axis; negative leans back).
    pose: dict
    pitch: float = 0.0
    start: dict = {}


SQUAT = legs(hip_y=-100, knee=-120)
TASKS = {
    "kneeling": Task("a humanoid robot kneeling", [
        ("knee_low", "<", 0.15, 0.4),  # a knee on the floor (its joint rests at ~0.05-0.11; standing 0.42)
        ("shin_back", ">", 0.2, 0.6),  # that knee's shin goes back from it, as when kneeling (0.3-0.4), not forward as when sitting
        ("torso_upright", ">", 0.7, 1.0),  # spine within ~45° of vertical: not on all fours, not lying
    ], pose=legs(knee=-90)),
    "lotus-position": Task("a humanoid robot seated down, meditating in the lotus position", [
        ("pelvis_height", "<", 0.18, 0.7),  # seated on the floor (0.11-0.15); squatting on the toes 0.22, on the heels 0.25
        ("torso_upright", ">", 0.7, 1.0),  # sitting up, not lying back
        ("knee_high", "<", 0.4, 0.4),  # both knees down at the sides (~0.3), not drawn up to the chest (~0.5)
        ("knees_apart", ">", 0.4, 0.3),  # knees spread out, as in the lotus (together: 0.2)
        ("feet_to_pelvis", "<", 0.45, 0.4),  # legs folded in, not stretched out in front (~0.75 straight)
        ("shin_back", "<", 0.2, 0.3),  # shins folded in front or beside, not back under the body (kneeling: > 0.2)
    ], pose={**legs(hip_x=-25, hip_z=-60, hip_y=-90, knee=-160), "abdomen_y": -45}, pitch=-10),
    "standing-up": Task("a humanoid robot standing up", STANDING, pose={}, start=SQUAT),  # from a squat
    "arms-raised": Task("a humanoid robot standing up, with both arms raised", STANDING + [
        ("low_hand_above_head", ">", 0.1, 0.5),  # both hands above the top of the head (head radius 0.09; at rest -0.13)
    ], pose=arms(-85, 20, -90)),
    "doing-splits": Task("a humanoid robot practicing gymnastics, doing the side splits", [
        ("feet_apart", ">", 1.2, 1.0),  # legs spread wide (standing 0.18; each leg is 0.85 long from the hip)
        ("pelvis_height", "<", 0.5, 0.4),  # hips dropped towards the floor (a wide stance with high hips is a straddle)
        ("foot_high", "<", 0.5, 0.5),  # both feet low (a split tilted a little still counts), not a leg kicked up high
        ("torso_upright", ">", 0.5, 1.0),  # trunk up, not lying on the back with the legs spread
    ], pose=legs(hip_x=-25, hip_z=-60, hip_y=-80)),  # the hips spread only 25°: the thighs turn out and lift
    "hands-on-hips": Task("a humanoid robot standing up with hands on hips", STANDING + [
        ("hands_to_hips", "<", 0.15, 0.5),  # each hand at the outer side of its hip (~0.1 there; 0.6 at rest)
    ], pose=arms(42.5, -75, -20)),
    "arms-crossed": Task("a humanoid robot standing up, with its arms crossed", STANDING + [
        # Each hand past the spine by more than its radius (0.04), so the forearms visibly cross (most they reach: 0.15).
        ("hands_crossed", ">", 0.04, 0.3),
        ("high_hand_above_head", "<", 0.0, 0.4),  # both hands below the head's centre: crossed in front, not overhead
    ], pose=arms(60, 40, -90)),
    "standing-on-one-leg": Task("a humanoid robot standing up on one leg", STANDING + [
        ("foot_low", "<", 0.15, 0.3),  # one foot on the floor (centre 0.075 when resting on it)
        ("foot_high", ">", 0.3, 0.3),  # the other lifted: its centre 0.3 m up, higher than a walking step
    ], pose={"left_hip_y": -90, "left_knee": -100}),
}


def condition_violation(features: dict, condition) -> float:
    """How far a feature is on the wrong side of its threshold (0 when the condition holds)."""
    feature, op, threshold, _ = condition
    value = features[feature]
    return max(threshold - value, 0.0) if op == ">" else max(value - threshold, 0.0)


def in_pose(features: dict, task: str) -> bool:
    """The detector: every condition of the task holds."""
    return all(condition_violation(features, c) == 0.0 for c in TASKS[task].conditions)


def pose_score(features: dict, task: str) -> float:
    """A graded detector in [0, 1]: the mean over the task's conditions of clip(1 - violation / margin, 0, 1).

    It is 1 exactly when in the pose and falls as the pose is left; `--reward pose` trains on it.
    """
    conditions = TASKS[task].conditions
    return float(np.mean([np.clip(1.0 - condition_violation(features, c) / c[3], 0.0, 1.0) for c in conditions]))


class CLIPHumanoidEnv(HumanoidEnv):
    """gymnasium's Humanoid-v5 with the paper's changes, rendered at CLIP's input size.

    - With the CLIP reward (`terminate=False`) falling does not end the episode; episodes end only
      by the time limit. `terminate=True` keeps gymnasium's termination (ground-truth runs).
    - With a `task` (CLIP and pose runs), the environment's reward is the ground truth of the task:
      1.0 while the robot is in the pose, else 0.0 (as CartPole's is 1 while the pole is upright), so
      an episode's return counts its steps in the pose. `info` carries `in_pose` and `pose_score`
      (the graded detector, the reward of `--reward pose` runs). Without a task the reward is
      gymnasium's (forward progress + staying healthy - control cost: `--reward ground-truth`).
    - `textured`: sky, stone floor and a light brushed-metal robot, generated here; `camera="paper"`:
      fixed in the world in front of the robot. The model is written to a temporary folder.
    - Observations are gymnasium's (float64), passed on as float32.
    """

    def __init__(self, frame_size=(224, 224), textured: bool = True, camera: str = "paper",
                 terminate: bool = False, task: str | None = None):
        height, width = frame_size
        super().__init__(xml_file=scene_file(textured, tuple(frame_size)), render_mode="rgb_array", width=width,
                         height=height,
                         default_camera_config=PAPER_CAMERA if camera == "paper" else DEFAULT_CAMERA_CONFIG,
                         terminate_when_unhealthy=terminate)
        self.task = task

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.task is not None:  # judge the state the step reached
            features = pose_features(self.data)
            info = {**info, "in_pose": in_pose(features, self.task), "pose_score": pose_score(features, self.task)}
            reward = float(info["in_pose"])
        return obs, reward, terminated, truncated, info

    def render(self):
        require_gl()
        return super().render()

    def set_pose(self, joints: dict, pitch: float = 0.0):
        """Put the robot at rest in a pose (the reward landscape, tests): joint angles in degrees on the start
        pose, clipped into each joint's range (the start pose's straight knee, 0°, is past the knee's -2° limit),
        the trunk pitched by `pitch` degrees, and lowered until its lowest point touches the floor."""
        qpos = self.init_qpos.copy()
        qpos[3:7] = np.cos(np.radians(pitch) / 2), 0.0, np.sin(np.radians(pitch) / 2), 0.0  # about the y axis
        for name, degrees in joints.items():
            joint = self.model.joint(name)
            qpos[joint.qposadr[0]] = np.clip(np.radians(degrees), *joint.range)
        self.set_state(qpos, np.zeros(self.model.nv))
        qpos[2] -= self.lowest_point()
        self.set_state(qpos, np.zeros(self.model.nv))

    def lowest_point(self) -> float:
        """Height of the lowest point of the robot's surface (its spheres and capsules)."""
        model, data = self.model, self.data
        robot = model.geom_bodyid > 0  # body 0 is the world (the floor)
        radius, half_length = model.geom_size[robot, 0], model.geom_size[robot, 1]
        # A capsule's end reaches below its centre by its half-length times the vertical part of its axis.
        capsule = model.geom_type[robot] == mujoco.mjtGeom.mjGEOM_CAPSULE
        reach = np.where(capsule, np.abs(data.geom_xmat[robot, 8]) * half_length, 0.0)
        return float((data.geom_xpos[robot, 2] - reach - radius).min())


# ==== BEGIN SHARED BLOCK: frame-in-info (identical in every script; tests/test_shared_blocks.py) ====
class FrameInInfo(gym.Wrapper):
    """Renders the state each step reached and returns it as `info["frame"]`.

    The frame comes from the same call as the transition, so the reward of a transition is always
    computed from the state it reached (the authors' code rendered after the vector env had
    auto-reset and scored the next episode's first frame instead). `info["render_seconds"]` lets
    the training loop account for rendering time in any kind of vector env.
    """

    def _with_frame(self, info):
        start = time.perf_counter()
        frame = self.env.render()
        return {**info, "frame": frame, "render_seconds": time.perf_counter() - start}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._with_frame(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._with_frame(info)
# ==== END SHARED BLOCK: frame-in-info ====


def make_env(episode_length: int, frame_size=None, textured: bool = True, camera: str = "paper",
             terminate: bool = False, task: str | None = None):
    """A thunk for the vector env. `frame_size=None`: no frames are rendered (pose and ground-truth rewards);
    `task`: the reward is 1 in that task's pose, else 0 (see CLIPHumanoidEnv)."""

    def thunk():
        env = CLIPHumanoidEnv(frame_size=frame_size or (224, 224), textured=textured, camera=camera,
                              terminate=terminate, task=task)
        env = gym.wrappers.TimeLimit(env, max_episode_steps=episode_length)
        float32_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
        env = gym.wrappers.TransformObservation(env, lambda obs: obs.astype(np.float32), float32_space)
        if frame_size is not None:
            env = FrameInInfo(env)
        return env

    return thunk


# ==== BEGIN SHARED BLOCK: clip-reward (identical in every script; tests/test_shared_blocks.py) ====
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fail(message: str):
    """Stop with one sentence on stderr and exit code 1, no traceback (bad flags, missing weights)."""
    raise SystemExit(f"error: {message}")


def resolve_clip_model(name: str) -> str:
    """An open_clip architecture name; a model config file (.json) is registered under its file name."""
    if not name.endswith(".json"):
        return name
    if not os.path.isfile(name):
        fail(f"--clip-model {name!r}: no such model config file.")
    open_clip.add_model_config(name)
    return os.path.splitext(os.path.basename(name))[0]


def check_reward_args(args, loads_weights: bool = True):
    """Check the reward flags before anything expensive is loaded."""
    if not 0.0 <= args.alpha <= 1.0:
        fail(f"--alpha must be in [0, 1] (0 = plain cosine similarity, 1 = full projection), got {args.alpha}.")
    for flag, prompts in (("--prompt", args.prompt), ("--baseline-prompt", args.baseline_prompt)):
        if not prompts or any(not p.strip() for p in prompts):
            fail(f"{flag} needs one or more non-empty sentences, e.g. {flag} \"a humanoid robot kneeling\".")
    if args.alpha > 0 and sorted(args.prompt) == sorted(args.baseline_prompt):
        fail("--baseline-prompt must differ from --prompt when --alpha > 0: the projection needs a direction.")
    if args.reward == "ground-truth" or not loads_weights:
        return
    args.clip_model = resolve_clip_model(args.clip_model)
    if args.clip_model not in open_clip.list_models():
        fail(f"--clip-model {args.clip_model!r} is not an open_clip architecture; "
             "use a name from open_clip.list_models(), e.g. RN50, ViT-B-32, ViT-L-14, ViT-H-14 or ViT-bigG-14, "
             "or the path of an open_clip model config (.json).")
    if not os.path.isfile(args.clip_pretrained):
        tags = open_clip.list_pretrained_tags_by_model(args.clip_model)
        looks_like_path = os.sep in args.clip_pretrained or args.clip_pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
        if looks_like_path or args.clip_pretrained not in tags:
            fail(f"--clip-pretrained {args.clip_pretrained!r} is neither an existing checkpoint file nor a "
                 f"pretrained tag of {args.clip_model} (its tags: {', '.join(tags) or 'none'}).")


def load_clip(model_name: str, pretrained: str, device):
    """An open_clip model (eval mode, no grads) and its tokenizer, from a tag or a checkpoint file."""
    if not os.path.isfile(pretrained):
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings are not for users
        try:  # download first, apart from building, so that only a download problem reads as one
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, pretrained))
        except Exception as e:
            fail(f"could not download the {pretrained!r} weights of {model_name} ({type(e).__name__}): run once "
                 "where the network is reachable so that open_clip caches them, or pass --clip-pretrained "
                 "with the path of a local checkpoint file.")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        fail(f"--clip-pretrained {pretrained!r} could not be loaded into {model_name}: {first_line}")
    return model.eval().requires_grad_(False), tokenizer


class CLIPReward(nn.Module):
    """The VLM-RM reward (paper, section 3).

    s = unit image embedding of a frame, g / b = mean unit text embedding of the goal / baseline
    prompts, d = g - b, P = d dᵀ / ‖d‖², M = α P + (1 - α) I, and

        R(s) = 1 - ½ ‖M (s - g)‖²

    With α = 0 and one goal prompt, R = s·g (cosine similarity). With α = 1 only the component of
    s - g along the baseline-to-goal direction counts.
    """

    def __init__(self, model, tokenizer, goal_prompts, baseline_prompts, alpha: float,
                 device="cpu", chunk_size: int = 256, precision: str = "fp32"):
        super().__init__()
        self.model, self.device, self.chunk_size = model, torch.device(device), chunk_size
        self.precision = precision  # of the image encoder's matrix products (autocast); see choose_precision
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)  # (height, width)
        self.register_buffer("mean", torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1))

        if not goal_prompts or not baseline_prompts:  # the mean of no embedding would be NaN
            fail("the CLIP reward needs at least one goal prompt and one baseline prompt.")
        goal = self.embed_prompts(tokenizer, goal_prompts)
        baseline = self.embed_prompts(tokenizer, baseline_prompts)
        direction = goal - baseline
        if alpha > 0 and direction.norm() < 1e-6:
            fail("--prompt and --baseline-prompt give the same embedding, so --alpha > 0 has no direction to "
                 "project on: choose a baseline that differs from the goal, or --alpha 0.")
        projection = torch.outer(direction, direction) / direction.norm().clamp_min(1e-12) ** 2
        identity = torch.eye(len(goal), device=self.device)
        self.register_buffer("goal", goal)
        self.register_buffer("baseline", baseline)
        self.register_buffer("projection", alpha * projection + (1 - alpha) * identity)  # M (symmetric)

    @torch.no_grad()
    def embed_prompts(self, tokenizer, prompts) -> torch.Tensor:
        tokens = tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).mean(dim=0)

    @torch.no_grad()
    def embed_images(self, frames) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> unit image embeddings (N, D), float32."""
        x = torch.as_tensor(frames, device=self.device).permute(0, 3, 1, 2).float().div_(255)
        if tuple(x.shape[-2:]) != self.image_size:  # frames are normally rendered at this size already
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False).clamp_(0, 1)
        x = (x - self.mean) / self.std
        with torch.autocast(self.device.type, dtype=TORCH_DTYPES[self.precision], enabled=self.precision != "fp32"):
            embeddings = self.model.encode_image(x)
        return F.normalize(embeddings.float(), dim=-1)

    def rewards_from_embeddings(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        residual = (image_embeddings - self.goal) @ self.projection
        return 1.0 - 0.5 * residual.pow(2).sum(dim=-1)

    @torch.no_grad()
    def forward(self, frames) -> np.ndarray:
        """Rewards (N,) for uint8 frames (N, H, W, 3), in CLIP passes of at most `chunk_size` frames
        (activation memory grows with the frames per pass: a chunk bounds it, whatever N)."""
        rewards = [self.rewards_from_embeddings(self.embed_images(frames[i: i + self.chunk_size]))
                   for i in range(0, len(frames), self.chunk_size)]
        return torch.cat(rewards).cpu().numpy() if rewards else np.zeros(0, dtype=np.float32)


def choose_precision(flag: str, device) -> str:
    """`--clip-precision`: `auto` is fp16 autocast on a GPU (as the authors ran CLIP) and fp32 on a CPU.

    A fixed rule, not a measurement, so that two runs with the same flags run the same arithmetic.
    (benchmarks/throughput.py measures the speed and reward fidelity of each precision.)
    """
    precision = flag if flag != "auto" else ("fp16" if torch.device(device).type == "cuda" else "fp32")
    print(f"CLIP image encoder runs in {precision}" + (" (autocast)" if precision != "fp32" else "")
          + (f" (--clip-precision auto on {torch.device(device).type})" if flag == "auto" else ""))
    return precision
# ==== END SHARED BLOCK: clip-reward ====


# ==== BEGIN SHARED BLOCK: seeding (identical in every script; tests/test_shared_blocks.py) ====
def seed_everything(seed: int, torch_deterministic: bool):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic
# ==== END SHARED BLOCK: seeding ====


# ---------------------------------------------------------------------------------------------
# Replay buffer, and the queue that scores frames in large CLIP batches
# ---------------------------------------------------------------------------------------------
# ==== BEGIN SHARED BLOCK: replay (identical in every script; tests/test_shared_blocks.py) ====
class ReplayBuffer:
    """Transitions in a ring; rewards are written later, when their frames have been scored."""

    def __init__(self, size: int, obs_dim: int, action_shape: tuple, action_dtype, device):
        self.size, self.device, self.pos, self.full = size, device, 0, False
        self.obs = np.zeros((size, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((size, obs_dim), dtype=np.float32)
        self.actions = np.zeros((size, *action_shape), dtype=action_dtype)
        self.rewards = np.full(size, np.nan, dtype=np.float32)  # NaN until the frame is scored (see add)
        self.terminations = np.zeros(size, dtype=np.float32)  # 1 only for a true terminal state

    def add(self, obs, next_obs, actions, terminations) -> np.ndarray:
        """Store a batch of transitions; returns their slots, for the rewards to come."""
        slots = (self.pos + np.arange(len(obs))) % self.size
        self.obs[slots], self.next_obs[slots] = obs, next_obs
        self.actions[slots], self.terminations[slots] = actions, terminations
        self.rewards[slots] = np.nan  # until scored: a transition sampled too early makes the losses NaN, not stale
        self.full = self.full or self.pos + len(obs) >= self.size
        self.pos = (self.pos + len(obs)) % self.size
        return slots

    def sample(self, batch_size: int):
        idx = np.random.randint(0, self.size if self.full else self.pos, size=batch_size)
        as_tensor = lambda a: torch.as_tensor(a[idx], device=self.device)  # noqa: E731
        return (as_tensor(self.obs), as_tensor(self.actions), as_tensor(self.rewards),
                as_tensor(self.next_obs), as_tensor(self.terminations))


class RewardQueue:
    """Transitions waiting for their reward, so that CLIP scores many frames in one call.

    Each entry: replay slot, env index, frame, ground-truth reward, and whether its episode ended
    there. `submit` hands the queued frames to CLIP as one batch, in a worker thread: the envs keep
    simulating and rendering while CLIP runs (on the GPU, where it matters most). `collect` waits
    for every submitted batch, writes the rewards into the buffer, and returns the entries in step
    order so that episode statistics are accumulated exactly as the steps happened.
    """

    def __init__(self, reward_model, rb: ReplayBuffer):
        self.reward_model, self.rb = reward_model, rb
        self.worker = ThreadPoolExecutor(max_workers=1) if reward_model is not None else None
        self.in_flight = deque()  # submitted batches, oldest first
        self.clip_seconds = 0.0  # time CLIP spent scoring, in the worker
        self.slots, self.env_ids, self.frames, self.true_rewards, self.episode_ends = [], [], [], [], []

    def __len__(self):
        return len(self.slots)

    def put(self, slots, frames, true_rewards, episode_ends):
        self.slots.extend(slots)
        self.env_ids.extend(range(len(slots)))
        self.frames.extend(frames if frames is not None else [None] * len(slots))
        self.true_rewards.extend(true_rewards)
        self.episode_ends.extend(episode_ends)

    def submit(self):
        batch = (self.slots, self.env_ids, self.frames, np.asarray(self.true_rewards, dtype=np.float32),
                 self.episode_ends)
        self.slots, self.env_ids, self.frames, self.true_rewards, self.episode_ends = [], [], [], [], []
        self.in_flight.append(self.worker.submit(self.score, *batch) if self.worker else self.score(*batch))

    def score(self, slots, env_ids, frames, true_rewards, episode_ends):
        if self.reward_model is None:  # ground truth: the environment's own reward
            self.rb.rewards[slots] = true_rewards
            return list(zip(env_ids, true_rewards, [np.nan] * len(slots), episode_ends))
        start = time.perf_counter()
        clip_rewards = self.reward_model(np.stack(frames))
        self.clip_seconds += time.perf_counter() - start
        self.rb.rewards[slots] = clip_rewards
        return list(zip(env_ids, true_rewards, clip_rewards, episode_ends))

    def collect(self):
        """Submit what is queued and wait for all batches; returns their entries in step order."""
        if len(self):
            self.submit()
        entries = []
        while self.in_flight:
            batch = self.in_flight.popleft()
            entries.extend(batch.result() if self.worker else batch)
        return entries


def step_envs(envs, obs, actions, rb: ReplayBuffer, queue: RewardQueue, timings: dict, ground_truth: bool = True):
    """Step every env once, store the transitions, queue their frames, and reset the envs whose
    episode ended. Returns the observations to act on next.

    The vector env runs with autoreset off, so every step is a real transition: next_obs and the
    frame belong to the state reached, also at the end of an episode. Termination stops
    bootstrapping; truncation by the time limit does not. `ground_truth=False`: the environment's
    reward is no ground truth for the task (the humanoid's), so NaN keeps it out of the logs.
    """
    start = time.perf_counter()
    next_obs, true_rewards, terminations, truncations, infos = envs.step(actions)
    render_seconds = float(infos["render_seconds"].sum()) if "render_seconds" in infos else 0.0
    timings["simulation"] += time.perf_counter() - start - render_seconds
    timings["rendering"] += render_seconds
    episode_ends = terminations | truncations
    slots = rb.add(obs, next_obs, actions, terminations)
    queue.put(slots, infos.get("frame"), true_rewards if ground_truth else np.full(len(slots), np.nan), episode_ends)
    if episode_ends.any():
        next_obs, reset_infos = envs.reset(options={"reset_mask": episode_ends})
        timings["rendering"] += float(reset_infos["render_seconds"].sum()) if "render_seconds" in reset_infos else 0.0
    return next_obs
# ==== END SHARED BLOCK: replay ====


# ==== BEGIN SHARED BLOCK: logging (identical in every script; tests/test_shared_blocks.py) ====
def write_hyperparameters(writer: SummaryWriter, args):
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
        f"|{key}|{value}|" for key, value in vars(args).items()))


class EpisodeStats:
    """Per-env running sums; a finished episode is logged with its ground-truth and CLIP returns.

    `is_success(ground-truth return) -> bool` says what success means in this environment (None:
    there is no such criterion). A NaN ground-truth reward means the environment has none.
    """

    def __init__(self, num_envs: int, is_success, writer: SummaryWriter):
        self.writer, self.is_success = writer, is_success
        self.true_return, self.clip_return = np.zeros(num_envs), np.zeros(num_envs)
        self.successes = deque(maxlen=10)  # for the console and the learning criterion
        self.recent_pairs = deque(maxlen=10_000)  # (clip, ground-truth) rewards for the correlation

    def add(self, entries, global_step: int):
        for env_id, true_reward, clip_reward, episode_end in entries:
            self.true_return[env_id] += true_reward
            self.clip_return[env_id] += clip_reward
            if not (np.isnan(clip_reward) or np.isnan(true_reward)):
                self.recent_pairs.append((clip_reward, true_reward))
            if episode_end:
                if not np.isnan(true_reward):
                    self.writer.add_scalar("charts/episodic_return", self.true_return[env_id], global_step)
                if self.is_success is not None:
                    success = float(self.is_success(self.true_return[env_id]))
                    self.successes.append(success)
                    self.writer.add_scalar("charts/success_rate", success, global_step)
                if not np.isnan(clip_reward):
                    self.writer.add_scalar("charts/episodic_clip_return", self.clip_return[env_id], global_step)
                    self.writer.add_scalar("charts/last_frame_clip_reward", clip_reward, global_step)
                self.true_return[env_id] = self.clip_return[env_id] = 0.0
        pairs = np.array(self.recent_pairs)
        if len(pairs) > 1 and pairs[:, 0].std() > 0 and pairs[:, 1].std() > 0:
            correlation = np.corrcoef(pairs.T)[0, 1]
            self.writer.add_scalar("charts/reward_correlation", correlation, global_step)
            # The paper's EPIC distance to the ground truth: for rewards of the reached state alone it is
            # sqrt((1 - ρ) / 2) (0: the same ordering of states, 1: reversed), here over the visited states.
            self.writer.add_scalar("charts/epic_distance", np.sqrt((1 - correlation) / 2), global_step)


def log_training_phase(writer: SummaryWriter, losses: dict, timings: dict, global_step: int, start_time: float) -> int:
    """Losses of the last gradient step, steps per second and the time spent in each phase; returns SPS."""
    for name, value in losses.items():
        writer.add_scalar(f"losses/{name}", value, global_step)
    sps = int(global_step / (time.time() - start_time))
    writer.add_scalar("charts/SPS", sps, global_step)
    for phase, seconds in timings.items():
        writer.add_scalar(f"time/{phase}_seconds", seconds, global_step)
    return sps


def write_results(run_dir: str, args, final: dict):
    """`results.json` in the run folder: the flags, the final figures and the code's git commit.

    run_all.sh builds its summary table from these files, so it can be rebuilt from run folders.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git
        commit = ""
    figures = {key: value for key, value in final.items() if value is None or isinstance(value, (int, float, str))}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"script": os.path.basename(__file__), "args": vars(args), "results": figures,
                   "git_commit": commit or "unknown"}, f, indent=1, default=str)
# ==== END SHARED BLOCK: logging ====


# ---------------------------------------------------------------------------------------------
# SAC: twin soft Q-functions and a squashed Gaussian actor (optionally with state-dependent noise)
# ---------------------------------------------------------------------------------------------
# ==== BEGIN SHARED BLOCK: sac (identical in every script; tests/test_shared_blocks.py) ====
class ScaleToUnit(nn.Module):
    """Maps bounded observations from their bounds to [-1, 1]; unbounded ones pass unchanged.

    MountainCar's velocity (±0.07) would otherwise be invisible next to its position (-1.2..0.6),
    and pushing along the velocity is what climbs the hill.
    """

    def __init__(self, observation_space):
        super().__init__()
        low, high = (torch.as_tensor(b, dtype=torch.float32) for b in (observation_space.low, observation_space.high))
        bounded = torch.isfinite(low) & torch.isfinite(high)
        self.register_buffer("centre", torch.where(bounded, (high + low) / 2, 0.0))
        self.register_buffer("half_range", torch.where(bounded, (high - low) / 2, 1.0))

    def forward(self, obs):
        return (obs - self.centre) / self.half_range


class SoftQNetwork(nn.Module):
    def __init__(self, observation_space, action_dim: int, hidden_size: int):
        super().__init__()
        obs_dim = observation_space.shape[0]
        self.scale = ScaleToUnit(observation_space)
        self.network = nn.Sequential(
            nn.Linear(obs_dim + action_dim, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, obs, actions):
        return self.network(torch.cat([self.scale(obs), actions], dim=1)).squeeze(1)


LOG_STD_MIN, LOG_STD_MAX = -5, 2  # range of the state-dependent log std without gSDE (as CleanRL)


class Actor(nn.Module):
    """a = tanh(u), scaled to the action bounds, with u = μ(s) + noise.

    With gSDE (Raffin et al., 2022, used by the authors' code) the noise is φ(s)ᵀW: φ(s) the last
    hidden layer (detached), W ~ N(0, σ_W²) drawn every `sde_sample_freq` steps. Between draws the
    noise is a fixed function of the state, so the car keeps pushing the same way in the same
    situation and can rock itself up the hill; noise drawn anew every step mostly cancels out
    (MountainCar's classic exploration trap). Given φ(s), the noise is Gaussian with variance
    φ(s)² · σ_W² per action, which gives the log-probability. Without gSDE: u ~ N(μ(s), σ(s)²).
    """

    def __init__(self, observation_space, action_space, hidden_size: int, sde: bool, log_std_init: float):
        super().__init__()
        obs_dim, action_dim = observation_space.shape[0], int(np.prod(action_space.shape))
        self.sde = sde
        self.trunk = nn.Sequential(ScaleToUnit(observation_space), nn.Linear(obs_dim, hidden_size), nn.ReLU(),
                                   nn.Linear(hidden_size, hidden_size), nn.ReLU())
        self.mean = nn.Linear(hidden_size, action_dim)
        if sde:
            self.log_std = nn.Parameter(torch.full((hidden_size, action_dim), log_std_init))  # log σ_W
        else:
            self.log_std = nn.Linear(hidden_size, action_dim)
        self.register_buffer("action_scale", torch.tensor((action_space.high - action_space.low) / 2.0,
                                                          dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((action_space.high + action_space.low) / 2.0,
                                                         dtype=torch.float32))

    def sample_exploration(self, *batch_shape) -> torch.Tensor:
        """Standard normal ε for gSDE's weights W = σ_W ⊙ ε: (*batch_shape, hidden, action_dim)."""
        return torch.randn(*batch_shape, *self.log_std.shape, device=self.log_std.device)

    def mean_action(self, obs):
        """The deterministic action (evaluation): draws no noise, so it leaves the random streams of
        training untouched (an evaluation must not change the run it evaluates)."""
        mean = self.mean(self.trunk(obs))
        if self.sde:
            mean = mean.clamp(-2.0, 2.0)
        return torch.tanh(mean) * self.action_scale + self.action_bias

    def forward(self, obs, exploration=None):
        """Returns (action, log π(action | obs)), the action sampled.

        `exploration`: gSDE's ε, one per env (num_envs, hidden, action_dim) during rollouts; None
        draws a fresh one shared by the whole batch (in a gradient step, the target's and the actor's
        actions each draw one; SB3 draws one per gradient step and shares it).
        """
        features = self.trunk(obs)
        mean = self.mean(features)
        if self.sde:
            mean = mean.clamp(-2.0, 2.0)  # keeps tanh away from saturation (SB3's clip_mean)
            phi, sigma_w = features.detach(), self.log_std.exp()
            eps = self.sample_exploration() if exploration is None else exploration
            noise = (phi.unsqueeze(-2) @ (sigma_w * eps)).squeeze(-2)
            std = (phi.pow(2) @ sigma_w.pow(2) + 1e-6).sqrt()
        else:
            log_std = torch.tanh(self.log_std(features))
            std = (LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)).exp()
            noise = std * torch.randn_like(mean)
        u = mean + noise
        squashed = torch.tanh(u)
        log_prob = torch.distributions.Normal(mean, std).log_prob(u)
        # Change of variables through tanh. The density is that of the action in [-1, 1], before scaling
        # to the bounds (as SB3), so the entropy target -action_dim means the same in every env.
        log_prob -= torch.log(1 - squashed.pow(2) + 1e-6)
        return squashed * self.action_scale + self.action_bias, log_prob.sum(dim=-1)


class SoftActorCritic:
    """SAC (Haarnoja et al., 2018) with SB3's settings, the library of the paper's code: every gradient
    step updates both critics, then the actor, then the entropy coefficient (with `--autotune`), then
    moves the target critics towards the critics by `tau`. (SB3 updates the coefficient first, from the
    same sampled actions; the order shifts it by one gradient step.)"""

    def __init__(self, observation_space, action_space, args, device):
        action_dim = int(np.prod(action_space.shape))
        self.gamma, self.tau = args.gamma, args.tau
        self.actor = Actor(observation_space, action_space, args.hidden_size, args.sde, args.log_std_init).to(device)
        self.qf1, self.qf2, self.qf1_target, self.qf2_target = (
            SoftQNetwork(observation_space, action_dim, args.hidden_size).to(device) for _ in range(4))
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=args.learning_rate)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.learning_rate)
        self.autotune = args.autotune
        if args.autotune:
            self.target_entropy = -float(action_dim)
            self.log_ent_coef = torch.zeros(1, requires_grad=True, device=device)
            self.ent_coef_optimizer = torch.optim.Adam([self.log_ent_coef], lr=args.learning_rate)
            self.ent_coef = 1.0
        else:
            self.ent_coef = args.ent_coef

    @torch.no_grad()
    def td_target(self, rewards, next_obs, terminations):
        """Soft Bellman target r + γ (min Q_target(s', a') - α log π(a'|s')), a' ~ π(s'), not bootstrapped
        from a terminal state (a time-limit truncation is not terminal: it is bootstrapped)."""
        next_actions, next_log_pi = self.actor(next_obs)
        next_q = torch.min(self.qf1_target(next_obs, next_actions), self.qf2_target(next_obs, next_actions))
        return rewards + self.gamma * (1 - terminations) * (next_q - self.ent_coef * next_log_pi)

    def update(self, obs, actions, rewards, next_obs, terminations) -> dict:
        # Critics: regress both onto the soft Bellman target of the target critics.
        td_target = self.td_target(rewards, next_obs, terminations)
        qf1_values, qf2_values = self.qf1(obs, actions), self.qf2(obs, actions)
        qf_loss = F.mse_loss(qf1_values, td_target) + F.mse_loss(qf2_values, td_target)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()

        # Actor: maximise the soft value of its own (reparameterised) actions.
        pi, log_pi = self.actor(obs)
        actor_loss = (self.ent_coef * log_pi - torch.min(self.qf1(obs, pi), self.qf2(obs, pi))).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        # Entropy coefficient: raised when the policy's entropy is below the target, lowered above it.
        if self.autotune:
            ent_coef_loss = -(self.log_ent_coef * (log_pi.detach() + self.target_entropy)).mean()
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.backward()
            self.ent_coef_optimizer.step()
            self.ent_coef = self.log_ent_coef.exp().item()

        with torch.no_grad():  # Polyak averaging of the target critics
            for net, target in ((self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                for param, target_param in zip(net.parameters(), target.parameters()):
                    target_param.lerp_(param, self.tau)
        return dict(td_loss=qf_loss.item() / 2, q_values=qf1_values.mean().item(), actor_loss=actor_loss.item(),
                    ent_coef=self.ent_coef)

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "qf1": self.qf1.state_dict(), "qf2": self.qf2.state_dict()}
# ==== END SHARED BLOCK: sac ====


# ==== BEGIN SHARED BLOCK: video (identical in every script; tests/test_shared_blocks.py) ====
def save_video(frames, clip_rewards, path: str):
    """An animated GIF of the frames with the CLIP reward of each written on it."""
    from PIL import Image, ImageDraw

    images = []
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame).resize((frame.shape[1] * 2, frame.shape[0] * 2), Image.NEAREST)
        text = f"t={t:3d}" + (f"  CLIP reward {clip_rewards[t]:.4f}" if clip_rewards is not None else "")
        ImageDraw.Draw(image).text((6, 6), text, fill=(0, 0, 0))
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
# ==== END SHARED BLOCK: video ====

# ---------------------------------------------------------------------------------------------
# Evaluation: deterministic episodes, image strips of what the policy does
# ---------------------------------------------------------------------------------------------
# ==== BEGIN SHARED BLOCK: landscape-plot (identical in every script; tests/test_shared_blocks.py) ====
def plot_reward_landscape(xs, rewards, in_goal, xlabel: str, goal_label: str, title: str, path: str):
    """CLIP reward against a state variable, with the ground-truth goal region shaded; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if in_goal.any():
        ax.axvspan(xs[in_goal].min(), xs[in_goal].max(), color="tab:green", alpha=0.15, label=goal_label)
    ax.plot(xs, rewards, marker=".", color="tab:blue", label="CLIP reward")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CLIP reward")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
# ==== END SHARED BLOCK: landscape-plot ====


def path_pose(task: str, f: float):
    """(joint angles, pitch) a fraction f of the way from the task's start to its pose."""
    start, goal = TASKS[task].start, TASKS[task].pose
    return {j: (1 - f) * start.get(j, 0.0) + f * goal.get(j, 0.0) for j in {**start, **goal}}, f * TASKS[task].pitch


def landscape_frames(task: str, frame_size, textured: bool, camera: str, points: int):
    """Frames of the robot at rest along a path of poses: the joint angles go in `points` even steps from
    the task's start (standing, for most) to its hand-built pose. Returns (fractions of the path, frames,
    in-pose flags of the detector)."""
    env = CLIPHumanoidEnv(frame_size, textured, camera)
    fractions, frames, flags = np.linspace(0.0, 1.0, points), [], []
    for f in fractions:
        env.set_pose(*path_pose(task, f))
        frames.append(env.render())
        flags.append(in_pose(pose_features(env.data), task))
    env.close()
    return fractions, np.stack(frames), np.array(flags)


def evaluate(actor, reward_model, args, device, episodes: int, frame_size, seed: int):
    """Deterministic episodes (mean action). Returns per-episode returns, CLIP rewards, frames and, where the
    task's detector judges the run (CLIP and pose runs), the steps in the pose and the episode's success."""
    task = args.task if args.reward != "ground-truth" else None
    env = make_env(args.episode_length, frame_size, args.textured, args.camera, args.reward == "ground-truth", task)()
    results = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        frames, in_pose_flags, true_return, done = [], [], 0.0, False
        while not done:
            with torch.no_grad():
                action = actor.mean_action(torch.as_tensor(obs, device=device, dtype=torch.float32)[None])[0].cpu().numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            true_return += reward
            in_pose_flags.append(info.get("in_pose", False))
            if frame_size is not None:
                frames.append(info["frame"])
            done = terminated or truncated
        clip_rewards = reward_model(np.stack(frames)) if reward_model is not None else None
        pose_fraction = float(np.mean(in_pose_flags)) if task is not None else np.nan
        results.append(dict(true_return=true_return, length=len(in_pose_flags),
                            pose_fraction=pose_fraction,
                            success=float(pose_fraction >= SUCCESS_FRACTION) if task is not None else np.nan,
                            clip_return=float(clip_rewards.sum()) if clip_rewards is not None else np.nan,
                            last_frame_clip_reward=float(clip_rewards[-1]) if clip_rewards is not None else np.nan,
                            frames=frames, clip_rewards=clip_rewards, in_pose=in_pose_flags if task is not None else None))
    env.close()
    return results


def mean(results: list, key: str) -> float:
    """The mean of one figure over evaluation episodes (NaN for none)."""
    return float(np.mean([r[key] for r in results])) if results else float("nan")


def image_strip(frames, clip_rewards, in_pose=None, count: int = 8) -> np.ndarray:
    """`count` evenly spaced frames of an episode side by side, each with its step, CLIP reward and,
    with the task's detector, "in pose" where it says so."""
    from PIL import Image, ImageDraw

    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    tiles = []
    for t in picks:
        tile = Image.fromarray(frames[t])
        text = f"t={t}" + (f" r={clip_rewards[t]:.3f}" if clip_rewards is not None else "")
        text += " in pose" if in_pose is not None and in_pose[t] else ""
        ImageDraw.Draw(tile).text((4, 4), text, fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
class PoseEpisodeStats(EpisodeStats):
    """The shared episode statistics for runs the task's detector judges, plus `charts/pose_fraction`.

    The environment's reward (the ground truth these statistics see) is 1 per step in the pose, so the
    shared block's ground-truth return is the number of steps in the pose, `charts/episodic_return`,
    and success is the paper's criterion on it: in the pose for at least half of the episode.
    """

    def __init__(self, num_envs: int, episode_length: int, writer: SummaryWriter):
        super().__init__(num_envs, lambda steps_in_pose: steps_in_pose >= SUCCESS_FRACTION * episode_length, writer)
        self.episode_length = episode_length
        self.steps_in_pose = np.zeros(num_envs)

    def add(self, entries, global_step: int):
        super().add(entries, global_step)
        for env_id, in_pose_flag, _, episode_end in entries:
            self.steps_in_pose[env_id] += in_pose_flag
            if episode_end:  # (no termination in these runs: every episode lasts episode_length steps)
                self.writer.add_scalar("charts/pose_fraction", self.steps_in_pose[env_id] / self.episode_length,
                                       global_step)
                self.steps_in_pose[env_id] = 0.0


class LastStepInfos(gym.vector.VectorWrapper):
    """Keeps the infos of the vector env's last step in `.infos` (step_envs returns only observations)."""

    def step(self, actions):
        *transition, self.infos = self.env.step(actions)
        return (*transition, self.infos)


def goal_prompts(args) -> tuple[str, ...]:
    """The goal prompt(s): `--prompt` where given, else the paper's prompt for `--task`."""
    return args.prompt or (TASKS[args.task].prompt,)


def main(args: Args, reward_model: CLIPReward | None = None) -> dict:
    """Train; returns final figures. `reward_model` replaces the one built from the flags (tests)."""
    check_ranges(args, RANGES)
    args.prompt = goal_prompts(args)
    uses_clip = args.reward == "clip"
    judged = args.reward != "ground-truth"  # the task's pose detector judges every step (CLIP and pose runs)
    check_reward_args(args, loads_weights=uses_clip and reward_model is None)
    other_task = [name for name, task in TASKS.items() if args.prompt == (task.prompt,) and name != args.task]
    if uses_clip and other_task:
        print(f"note: --prompt is the paper's prompt for --task {other_task[0]}, but the {args.task} detector "
              f"judges success; add --task {other_task[0]} to judge it as that task.")
    if uses_clip:
        require_gl()
    run_name = f"Humanoid__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.output_dir, run_name)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # The reward model: text embeddings once.
    if uses_clip and reward_model is None:
        model, tokenizer = load_clip(args.clip_model, args.clip_pretrained, device)
        reward_model = CLIPReward(model, tokenizer, args.prompt, args.baseline_prompt, args.alpha, device=device,
                                  chunk_size=args.clip_chunk_size, precision=choose_precision(args.clip_precision, device))
    writer = SummaryWriter(run_dir)
    write_hyperparameters(writer, args)
    frame_size = reward_model.image_size if uses_clip else None
    if uses_clip:  # the reward landscape (the paper's figure 2): does the prompt rank the goal pose highest?
        fractions, frames, posed = landscape_frames(args.task, frame_size, args.textured, args.camera,
                                                    args.landscape_points)
        rewards = reward_model(frames)
        origin = "a squat" if TASKS[args.task].start else "standing"
        fig = plot_reward_landscape(fractions, rewards, posed, f"joint angles from {origin} (0) to the {args.task} pose (1)",
                                    f"{args.task} (detector)", f"{args.prompt[0]!r}, alpha={args.alpha}",
                                    os.path.join(run_dir, "reward_landscape.png"))
        writer.add_figure("reward_landscape", fig)
        gap = rewards[posed].mean() - rewards[~posed].mean()
        writer.add_scalar("landscape/in_pose_minus_out", gap, 0)
        print(f"reward landscape: mean CLIP reward in the {args.task} pose - out of it = {gap:.4g} "
              "(positive: the prompt can work)")

    envs = LastStepInfos(gym.vector.SyncVectorEnv(
        [make_env(args.episode_length, frame_size, args.textured, args.camera, terminate=args.reward == "ground-truth",
                  task=args.task if judged else None)
         for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED))
    observation_space, action_space = envs.single_observation_space, envs.single_action_space
    agent = SoftActorCritic(observation_space, action_space, args, device)
    actor = agent.actor  # acts in the envs; agent.update trains it
    rb = ReplayBuffer(args.buffer_size, observation_space.shape[0], action_space.shape, np.float32, device)
    queue = RewardQueue(reward_model, rb)
    # Walking (ground-truth runs) has no success criterion; the pose tasks have the paper's.
    stats = PoseEpisodeStats(args.num_envs, args.episode_length, writer) if judged else EpisodeStats(
        args.num_envs, None, writer)
    timings = dict(simulation=0.0, rendering=0.0, clip=0.0, updates=0.0)
    start_time, global_step, updates_done, next_eval = time.time(), 0, 0, 0
    losses = {}
    pose_rewards = []  # pose runs: (replay slots, pose scores) of the steps since the rewards were last collected

    def collect_rewards():
        stats.add(queue.collect(), global_step)
        timings["clip"] = queue.clip_seconds
        # Pose runs: the queue stored the environment's reward, the in-pose flag (the ground truth the statistics
        # need); the baseline trains on the graded pose score of the same states, written over the flags here.
        for slots, scores in pose_rewards:
            rb.rewards[slots] = scores
        pose_rewards.clear()

    def evaluate_and_show(episodes: int, seed: int):
        """Deterministic episodes, logged as eval/*; the first one is saved as an image strip (and a GIF
        with --capture-video) where frames can be rendered."""
        rendered = GL_BACKEND is not None and episodes > 0  # without CLIP and without OpenGL: figures only
        results = evaluate(actor, reward_model, args, device, episodes, frame_size or (224, 224) if rendered else None, seed)
        for tag, key, logged in [("success_rate", "success", judged), ("pose_fraction", "pose_fraction", judged),
                                 ("clip_return", "clip_return", uses_clip),
                                 ("last_frame_clip_reward", "last_frame_clip_reward", uses_clip),
                                 ("episodic_return", "true_return", not judged)]:
            if results and logged:
                writer.add_scalar(f"eval/{tag}", mean(results, key), global_step)
        if not rendered:
            return results
        strip = image_strip(results[0]["frames"], results[0]["clip_rewards"], results[0]["in_pose"])
        writer.add_image("eval/episode_strip", strip, global_step, dataformats="HWC")
        os.makedirs(os.path.join(run_dir, "strips"), exist_ok=True)
        from PIL import Image

        Image.fromarray(strip).save(os.path.join(run_dir, "strips", f"eval_step{global_step}.png"))
        if args.capture_video:
            os.makedirs(os.path.join(run_dir, "videos"), exist_ok=True)
            save_video(results[0]["frames"], results[0]["clip_rewards"],
                       os.path.join(run_dir, "videos", f"eval_step{global_step}.gif"))
        return results

    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    exploration = actor.sample_exploration(args.num_envs) if args.sde else None
    while global_step < args.total_timesteps:
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            if args.sde and global_step % args.sde_sample_freq < args.num_envs:
                exploration = actor.sample_exploration(args.num_envs)  # new noise function, one per env
            with torch.no_grad():
                actions = actor(torch.as_tensor(obs, device=device, dtype=torch.float32), exploration)[0].cpu().numpy()
        obs = step_envs(envs, obs, actions, rb, queue, timings)
        if args.reward == "pose":  # the slots step_envs has just filled, and the scores of the states they reached
            pose_rewards.append(((rb.pos - args.num_envs + np.arange(args.num_envs)) % rb.size,
                                 envs.infos["pose_score"]))
        global_step += args.num_envs
        if len(queue) >= args.clip_batch_size:
            queue.submit()  # CLIP scores these frames in the background while the envs keep stepping
            if len(queue.in_flight) > 2:  # CLIP is behind: wait, so that frames do not pile up in memory
                collect_rewards()

        # Training phases: gradient-steps updates each time the step count passes a multiple of train-frequency
        # after learning starts (as SB3's rollouts end), counted in transitions so that the updates per
        # transition do not depend on --num-envs.
        updates_owed = args.gradient_steps * max(global_step // args.train_frequency
                                                 - args.learning_starts // args.train_frequency, 0)
        if updates_owed - updates_done >= args.gradient_steps:
            collect_rewards()  # every stored transition has its reward before sampling
            start = time.perf_counter()
            for _ in range(updates_owed - updates_done):
                losses = agent.update(*rb.sample(args.batch_size))
            updates_done = updates_owed
            timings["updates"] += time.perf_counter() - start
            sps = log_training_phase(writer, losses, timings, global_step, start_time)
            recent = f", success (last 10 episodes) {np.mean(stats.successes):.2f}" if stats.successes else ""
            print(f"step {global_step}: SPS {sps}, td_loss {losses['td_loss']:.4g}, q {losses['q_values']:.4g}{recent}, "
                  + ", ".join(f"{phase} {seconds:.0f}s" for phase, seconds in timings.items()))

        if global_step >= next_eval and global_step > args.learning_starts:
            evaluate_and_show(max(args.eval_episodes, 1), args.seed)
            next_eval = global_step + args.video_interval
    collect_rewards()
    envs.close()
    loop_seconds = time.time() - start_time  # training only: the final evaluation is not in the SPS

    results = evaluate_and_show(args.eval_episodes, args.seed + 10_000)
    final = dict(
        eval_success_rate=mean(results, "success"), eval_pose_fraction=mean(results, "pose_fraction"),
        train_success_rate_last10=float(np.mean(stats.successes)) if stats.successes else float("nan"),
        eval_episodic_return=mean(results, "true_return"), eval_clip_return=mean(results, "clip_return"),
        eval_last_frame_clip_reward=mean(results, "last_frame_clip_reward"),
        **losses, global_step=global_step, gradient_steps_done=updates_done, run_dir=run_dir,
        replay_buffer=rb,
        sps=global_step / loop_seconds, wall_seconds=time.time() - start_time,
        timings=timings, precision=getattr(reward_model, "precision", None),
    )
    if args.save_model:
        model_path = os.path.join(run_dir, f"{args.exp_name}.cleanrl_model")
        torch.save(agent.state_dict(), model_path)
        final["model_path"] = model_path
        print(f"model saved to {model_path}")
    success = (f"success rate {final['eval_success_rate']:.2f} (in the {args.task} pose for at least half of the "
               f"episode), pose fraction {final['eval_pose_fraction']:.2f}, " if judged else "")
    clip = (f", CLIP return {final['eval_clip_return']:.4g}, last-frame CLIP reward "
            f"{final['eval_last_frame_clip_reward']:.4g}" if uses_clip else "")
    print(f"eval: {success}return {final['eval_episodic_return']:.1f}{clip}")
    write_results(run_dir, final=final, args=args)
    writer.close()
    return final


if __name__ == "__main__":
    main(tyro.cli(Args))
