"""A contact sheet of the humanoid's pose detectors: for each of the paper's eight tasks, frames its
detector calls in the pose and frames it does not, in one labelled PNG, to check them by eye.

    python benchmarks/pose_contact_sheet.py --out pose_contact_sheet.png

The frames come from three sources:
- hand-built poses (POSES below: joint angles set by hand, each with what a person calls it),
- the same poses jittered (every joint moved at random, up to `--jitter` degrees): near the
  detectors' boundaries, where they are most likely to disagree with a person,
- rollouts of random actions from the usual start (the robot flails and falls).
For each task the sheet shows `--per-side` frames in the pose (one per source first, the highest
scores first) and as many not in the pose, nearest misses first (the highest pose scores): the
frames a detector is most likely to get wrong. Each frame is labelled with its source and score,
"person: ..." names what a hand-built pose was built to be; for the other frames, the red text names
the conditions that fail. Each tile shows the robot close up from the front (the direction of the
paper's camera) and from its left side, easier to judge than the frames CLIP sees.
tests/test_pose.py checks the detectors against POSES.
"""

import os
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_clip_humanoid as humanoid  # noqa: E402  (chooses MuJoCo's OpenGL backend before mujoco is imported)
import mujoco  # noqa: E402


class Pose(NamedTuple):
    joints: dict  # joint name -> angle in degrees (the others stay at the start pose's 0)
    pitch: float = 0.0  # the trunk's pitch in degrees about the y axis (0 stands upright, -90 lies on the back)
    person: frozenset = frozenset()  # the tasks a person looking at the pose names (tests/test_pose.py checks them)


legs, arms, TASKS = humanoid.legs, humanoid.arms, humanoid.TASKS


def task_pose(task: str, person: frozenset) -> Pose:
    """The task's own hand-built example (TASKS[task].pose, the end of its reward landscape's path)."""
    return Pose(TASKS[task].pose, TASKS[task].pitch, person)


# Poses built by hand and looked at (front, side and three-quarter views) before being named here.
# The joint limits of gymnasium's humanoid shape what it can do: the arms cannot hang straight down
# (hands no lower than the waist with a straight arm), the hips spread only 25° sideways (the side
# splits turn the thighs out and lift them instead), and crossed hands reach 15 cm past the spine.
STAND = frozenset({"standing-up"})
POSES = {
    "standing": task_pose("standing-up", STAND),
    "lying on its back": Pose({}, -90),
    "lying face down": Pose(arms(60, -40, -60), 90),
    "kneeling upright": task_pose("kneeling", frozenset({"kneeling"})),
    "kneeling on its heels": Pose(legs(hip_y=-75, knee=-160), person=frozenset({"kneeling"})),
    "on one knee": Pose({"right_knee": -90, "left_hip_y": -90, "left_knee": -90}, person=frozenset({"kneeling"})),
    "side splits": task_pose("doing-splits", frozenset({"doing-splits"})),
    "arms raised": task_pose("arms-raised", STAND | {"arms-raised"}),
    "hands on hips": task_pose("hands-on-hips", STAND | {"hands-on-hips"}),
    "arms crossed": task_pose("arms-crossed", STAND | {"arms-crossed"}),
    "on one leg": task_pose("standing-on-one-leg", STAND | {"standing-on-one-leg"}),
    # The hips cannot turn the shins flat onto the floor, so no true lotus: seated on the floor, upright, the
    # knees spread and the feet drawn in (the pelvis tilted back under an upright chest) is as close as it gets.
    "seated, legs folded (lotus)": task_pose("lotus-position", frozenset({"lotus-position"})),
    "squatting, knees spread": Pose(legs(hip_x=-25, hip_z=-60, hip_y=-90, knee=-160)),  # on its toes, not seated
    "squatting": Pose(humanoid.SQUAT),
    "seated, legs straight out": Pose(legs(hip_y=-90)),
}


def jittered(env, pose: Pose, rng, degrees: float) -> dict:
    """A pose's joint angles with every hinge joint moved by up to ±`degrees`, kept in its range."""
    model = env.unwrapped.model
    joints = {}
    for j in range(1, model.njnt):  # joint 0 is the root (free joint)
        name = model.joint(j).name
        low, high = np.degrees(model.jnt_range[j])
        joints[name] = float(np.clip(pose.joints.get(name, 0.0) + rng.uniform(-degrees, degrees), low, high))
    return joints


@dataclass
class Args:
    out: str = "pose_contact_sheet.png"
    """the PNG to write"""
    per_side: int = 4
    """frames per task in the pose, and as many not in it"""
    jitters: int = 12
    """jittered copies of each hand-built pose"""
    jitter: float = 20.0
    """largest change of each joint angle in a jittered pose (degrees)"""
    rollouts: int = 10
    """episodes of random actions (100 steps each, no termination)"""
    seed: int = 0
    """seed of the jitter and of the random actions"""
    size: int = 200
    """height of a tile (a front and a side view, close up, each size x size pixels)"""


def source(label: str) -> str:
    return "jittered" if " ~" in label else "random" if label.startswith("random ") else "hand-built"


def collect_states(env, args: Args):
    """(source label, qpos, qvel) of every candidate state: hand-built, jittered, random rollouts."""
    rng = np.random.default_rng(args.seed)
    states = []
    for name, pose in POSES.items():
        humanoid.set_pose(env, pose.joints, pose.pitch)
        states.append((name, env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy()))
        for k in range(args.jitters):
            humanoid.set_pose(env, jittered(env, pose, rng, args.jitter), pose.pitch)
            states.append((f"{name} ~{k}", env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy()))
    env.action_space.seed(args.seed)
    for episode in range(args.rollouts):
        env.reset(seed=args.seed + episode)
        for t in range(100):
            env.step(env.action_space.sample())
            states.append((f"random e{episode} t{t + 1}", env.unwrapped.data.qpos.copy(),
                           env.unwrapped.data.qvel.copy()))
    return states


def close_views(renderer, data, size: int) -> np.ndarray:
    """The robot from the front (the paper camera's direction) and from its left side, closer than the
    paper's camera and centred on the pelvis, side by side: easier to judge than the 224x224 frame."""
    views = []
    for azimuth in (180.0, 90.0):
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        camera.distance, camera.azimuth, camera.elevation = 2.8, azimuth, -10.0
        camera.lookat[:] = (data.body("pelvis").xpos[0], data.body("pelvis").xpos[1], 0.75)
        renderer.update_scene(data, camera)
        views.append(renderer.render())
    return np.concatenate(views, axis=1)


def failed_conditions(features: dict, task: str) -> str:
    """The conditions that do not hold, e.g. "torso_upright 0.65 (> 0.7)"."""
    return ", ".join(f"{name} {features[name]:.2f} ({op} {threshold})"
                     for name, op, threshold, margin in humanoid.TASKS[task].conditions
                     if humanoid.condition_depth(features, (name, op, threshold, margin)) < 0)


def main(args: Args) -> dict:
    from PIL import Image, ImageDraw

    humanoid.require_gl()
    env = humanoid.CLIPHumanoidEnv(frame_size=(args.size, args.size))
    renderer = mujoco.Renderer(env.model, args.size, args.size)
    env.reset(seed=args.seed)
    states = collect_states(env, args)
    features = []
    for _, qpos, qvel in states:
        env.set_state(qpos, qvel)
        features.append(humanoid.pose_features(env.data))

    rows, counts = [], {}
    for task in humanoid.TASKS:
        flags = np.array([humanoid.in_pose(f, task) for f in features])
        scores = np.array([humanoid.pose_score(f, task) for f in features])
        counts[task] = dict(in_pose=int(flags.sum()), states=len(states))
        # In the pose: taken in turn from the hand-built, jittered and random states, at random within each.
        shuffle = np.random.default_rng(args.seed).permutation
        by_source = [list(shuffle([i for i in np.flatnonzero(flags) if source(states[i][0]) == kind]))
                     for kind in ("hand-built", "jittered", "random")]
        chosen_in = [i for turn in range(len(states)) for group in by_source if turn < len(group)
                     for i in [group[turn]]][: args.per_side]
        # Not in the pose: the nearest misses (highest scores) first.
        outside = sorted(np.flatnonzero(~flags), key=lambda i: -scores[i])[: args.per_side]
        tiles = []
        for i in [*chosen_in, *[None] * (args.per_side - len(chosen_in)), *outside]:
            tile = Image.new("RGB", (2 * args.size, args.size), (40, 40, 40))
            if i is not None:
                label, qpos, qvel = states[i]
                env.set_state(qpos, qvel)
                tile = Image.fromarray(close_views(renderer, env.data, args.size))
                pose = POSES.get(label)
                note = (f"person: {', '.join(sorted(pose.person)) or '-'}" if pose is not None
                        else failed_conditions(features[i], task))
                draw = ImageDraw.Draw(tile)
                draw.rectangle((0, 0, 2 * args.size - 1, 25), fill=(255, 255, 255))
                draw.text((3, 2), f"{label[:40]}  score {scores[i]:.3f}", fill=(0, 0, 0))
                draw.text((3, 13), note[:70], fill=(0, 0, 150) if pose is not None else (150, 0, 0))
            tiles.append(np.asarray(tile))
        row = np.concatenate(tiles, axis=1)
        header = Image.new("RGB", (row.shape[1], 18), (230, 230, 230))
        ImageDraw.Draw(header).text((4, 3), f"{task}: left {args.per_side} IN the pose ({flags.sum()} of {len(states)} "
                                            f"states), right {args.per_side} NOT in it (nearest misses)", fill=(0, 0, 0))
        rows += [np.asarray(header), row]
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    renderer.close()
    env.close()
    print(f"wrote {args.out}")
    for task, count in counts.items():
        print(f"{task:22s} in the pose in {count['in_pose']:4d} of {count['states']} states")
    return counts


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
