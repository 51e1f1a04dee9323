"""Will this CLIP reward work? How a reward (a CLIP model, goal and baseline prompts, an α) orders ~2,000
states whose ground truth is known: minutes on a CPU the first time, seconds for every prompt and α after.

    python benchmarks/reward_report.py --env cartpole --clip-model ViT-B-32 --clip-pretrained laion2b_s34b_b79k --out report
    python benchmarks/reward_report.py --env humanoid --task kneeling --prompts-file prompts.txt --alpha 0 0.5 1 --out report
    python benchmarks/reward_report.py --env humanoid --task kneeling --out report \
        --clip-model RN50-quickgelu ViT-L-14 ViT-H-14 ViT-bigG-14 \
        --clip-pretrained openai laion2b_s32b_b82k laion2b_s32b_b79k laion2b_s39b_b160k   # the paper's model scale

States, made from --state-seed with the scripts' own environments and scenes (imported, not copied) and rendered
at each model's input size, as the scripts render them for training:
- cartpole: a grid of pole angles (-90° to 90°) by cart positions (-2.4 to 2.4), at rest (the paper's EPIC for
  classic control used states spread uniformly). Goal: upright (±12°). Graded truth: -|angle|.
- mountaincar: a grid of positions by velocities. Goal: at the flag (x ≥ 0.45). Graded truth: the position.
  Velocities do not show in a frame: states with the same frame are embedded once.
- humanoid: every step of --episodes episodes of zero actions and as many of random actions from the env's
  start states, the reward landscapes' paths (every task's, from its start to its hand-built pose), and the hand-built
  poses of benchmarks/pose_contact_sheet.py with --jitters jittered copies each. Goal: the task's pose
  detector. Graded truth: its pose score (`--reward pose`). The states, and so their embeddings, serve every task.
- `--states RUN_DIR`: --sample states a run reached (the next observations in its newest checkpoint's replay
  buffer; the paper's humanoid EPIC used the states of trained policies). A humanoid observation leaves out
  where the robot stands: its states are rendered at x = y = 0.

Caches (--cache-dir): each state set, and the image embeddings of each (model, weights, precision, frame size,
scene, state set, and the environment script's source, so that a changed scene or renderer is embedded anew).
Embeddings are float32 .npy files: the rewards scored from them are the scripts' float32 rewards exactly, and
2,000 ViT-bigG-14 embeddings take 10 MB. Frames are not kept.

Figures of each candidate (model, prompts, α), best first by EPIC distance:
- EPIC distance: sqrt((1 - ρ) / 2), ρ Pearson's correlation of the reward with the goal label (the paper's
  measure: 0 is a reward that is an affine function of the label, 0.71 an uncorrelated one);
- AUC: the chance that a goal state gets more reward than a non-goal one (0.5: chance; 0: reversed);
- Spearman ρ with the graded truth (does the reward say "closer" where the label only says "not yet");
- separation: (mean reward of goal states - mean of the others) / the reward's standard deviation;
- spread: the reward's standard deviation over the states. CLIP rewards differ by a few hundredths between
  states; SAC's entropy bonus (and DQN's ε) compete with those differences, not with the reward's level.
Random weights (the tests', a checkpoint made for timing) give meaningless figures: only the weights of a
trained CLIP say whether a prompt works.
"""

import glob
import hashlib
import importlib
import inspect
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward_stats import auc, epic_distance, pearson, spearman  # noqa: E402

SCRIPTS = {"cartpole": "dqn_clip_cartpole", "mountaincar": "sac_clip_mountaincar", "humanoid": "sac_clip_humanoid"}
OBS_DIM = {"cartpole": 4, "mountaincar": 2}  # the humanoid's: its observation space's
DEFAULT_GRID = {"cartpole": (45, 45), "mountaincar": (100, 20)}


@dataclass
class Args:
    env: Literal["cartpole", "mountaincar", "humanoid"]
    """the environment whose states are scored (its script's scene and ground truth)"""
    task: str = "kneeling"
    """humanoid: the paper's task whose detector labels the states and whose prompt is the default"""
    clip_model: tuple[str, ...] = ("ViT-bigG-14",)
    """open_clip architectures (or model configs, .json): several make the model-scale study in one call"""
    clip_pretrained: tuple[str, ...] = ("laion2b_s39b_b160k",)
    """the pretrained tag or local checkpoint file of each --clip-model, in the same order"""
    prompt: tuple[str, ...] = ()
    """goal prompt(s) of one candidate, averaged as in the scripts (default: the script's, or the task's)"""
    baseline_prompt: tuple[str, ...] = ()
    """baseline prompt(s) of that candidate (default: the script's)"""
    prompts_file: str | None = None
    """more candidates, one per line: goal prompts separated by ';', then optionally '|' and baseline prompts (else the default baseline); '#' starts a comment"""
    alpha: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """goal-baseline projection weights to score every candidate at, each in [0, 1]"""
    textured: bool = True
    """mountaincar and humanoid: the paper's realistic scene (`--no-textured`: gymnasium's look)"""
    camera: Literal["paper", "stock"] = "paper"
    """humanoid: the paper's fixed camera or gymnasium's"""
    fast_render: bool = False
    """humanoid: no shadows and no multisampling (the scripts' --fast-render)"""
    states: str | None = None
    """a run folder: score states that run reached (from its newest checkpoint's replay buffer) instead of the generated set"""
    sample: int = 2000
    """states drawn from the run's buffer (with --states)"""
    state_seed: int = 0
    """seed of the humanoid's start states, random actions and jitter, and of the sample of a run's states"""
    grid: tuple[int, int] | None = None
    """points per axis of the classic-control grid (default: cartpole 45 angles x 45 positions, mountaincar 100 positions x 20 velocities)"""
    episodes: int = 8
    """humanoid: episodes (100 steps) of zero actions, and as many of random actions"""
    jitters: int = 12
    """humanoid: jittered copies of each hand-built pose"""
    path_points: int = 21
    """humanoid: poses on the path from the task's start to its hand-built pose"""
    clip_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """CLIP image-encoder precision, as the scripts' flag (auto: fp16 on a GPU, fp32 on a CPU)"""
    clip_chunk_size: int = 0
    """most frames per CLIP pass, as the scripts' flag (0: 256 on a GPU, 32 on a CPU)"""
    cuda: bool = True
    """if toggled, CUDA is used when available"""
    cache_dir: str = "runs/reward_cache"
    """where state sets and embeddings are cached"""
    out: str = "reward_report"
    """the folder that receives report.md, report.json and report.png"""


def fail(message: str):
    raise SystemExit(f"error: {message}")


def command_line(args: Args) -> str:
    """The command that makes this report: the flags that differ from their defaults."""
    words = ["python", "benchmarks/reward_report.py", "--env", args.env] + (
        ["--task", args.task] if args.env == "humanoid" else [])
    for field in fields(Args):
        value = getattr(args, field.name)
        if field.name in ("env", "task") or value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            words += [flag, *map(str, value if isinstance(value, tuple) else (value,))]
    return shlex.join(words)


def read_candidates(args: Args, script) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(goal prompts, baseline prompts) of every candidate: the flags' one (or the script's default) first."""
    default_goal = (script.TASKS[args.task].prompt,) if args.env == "humanoid" else script.Args.prompt
    default_baseline = script.Args.baseline_prompt
    candidates = [(args.prompt or default_goal, args.baseline_prompt or default_baseline)]
    if args.prompts_file is not None:
        if not os.path.isfile(args.prompts_file):
            fail(f"--prompts-file {args.prompts_file!r}: no such file.")
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                lines = [line.split("#")[0].strip() for line in f]
        except UnicodeDecodeError:
            fail(f"--prompts-file {args.prompts_file!r} is not UTF-8 text.")
        lines = [line for line in lines if line]
        if not lines:
            fail(f"--prompts-file {args.prompts_file!r} holds no candidate: write one per line, "
                 "e.g. 'a humanoid robot kneeling | a humanoid robot'.")
        for line in lines:
            goal, _, baseline = line.partition("|")
            goal = tuple(p.strip() for p in goal.split(";") if p.strip())
            baseline = tuple(p.strip() for p in baseline.split(";") if p.strip()) or default_baseline
            if not goal:
                fail(f"--prompts-file {args.prompts_file!r}: the line {line!r} has no goal prompt before '|'.")
            candidates.append((goal, baseline))
    unique = list(dict.fromkeys(candidates))
    if max(args.alpha) > 0:
        for goal, baseline in unique:
            if {p.lower() for p in goal} == {p.lower() for p in baseline}:  # the same prompts, to the tokenizer
                fail(f"the candidate {' / '.join(goal)!r} has the same goal and baseline prompts, so --alpha > 0 has "
                     "no direction to project on: give it another baseline, or --alpha 0 only.")
    return unique


def check(args: Args, script):
    """Bad input stops here, with one sentence, before anything is loaded or embedded (each --clip-model with its
    --clip-pretrained by the script's own checks)."""
    if args.env == "humanoid" and args.task not in script.TASKS:
        fail(f"--task must be one of {', '.join(script.TASKS)}, got {args.task!r}.")
    if not args.alpha or any(not 0.0 <= a <= 1.0 for a in args.alpha):
        fail(f"--alpha takes values in [0, 1], got {' '.join(map(str, args.alpha)) or 'none'}.")
    for flag, value, least in (("--sample", args.sample, 1), ("--episodes", args.episodes, 1),
                               ("--path-points", args.path_points, 2), ("--jitters", args.jitters, 0),
                               ("--grid", min(args.grid or (2,)), 2)):
        if value < least:
            fail(f"{flag} must be at least {least}, got {value}.")
    for flag, prompts in (("--prompt", args.prompt), ("--baseline-prompt", args.baseline_prompt)):
        if any(not p.strip() for p in prompts):
            fail(f"{flag} takes non-empty sentences.")
    if os.path.isfile(args.out):
        fail(f"--out {args.out!r} is a file; it names the folder that receives the report.")
    if len(args.clip_model) != len(args.clip_pretrained):
        fail(f"--clip-pretrained needs one tag or file per --clip-model: {len(args.clip_model)} models, "
             f"{len(args.clip_pretrained)} weights.")
    if len(set(model_labels(args))) < len(args.clip_model):
        fail("two --clip-model / --clip-pretrained pairs are the same model: give each once.")
    if args.env == "humanoid":
        script.require_gl()  # MuJoCo renders headless, or one sentence says why not
    for name, weights in zip(args.clip_model, args.clip_pretrained):
        script.clip_architecture(SimpleNamespace(clip_model=name, clip_pretrained=weights))


def model_labels(args: Args) -> list[str]:
    """'ViT-B-32 laion2b_s34b_b79k' for each model: the names as given, a checkpoint file's without its folder."""
    return [f"{os.path.basename(name)} {os.path.basename(weights) if os.path.isfile(weights) else weights}"
            for name, weights in zip(args.clip_model, args.clip_pretrained)]


# --------------------------------------------------------------------------------------------------------------
# States with ground truth
# --------------------------------------------------------------------------------------------------------------
def scene_env(args: Args, script, frame_size):
    """One environment of the script's scene, rendering at `frame_size`."""
    if args.env == "cartpole":
        return script.CLIPCartPoleEnv(frame_size)
    if args.env == "mountaincar":
        return script.CLIPMountainCarEnv(frame_size, args.textured)
    return script.CLIPHumanoidEnv(frame_size, args.textured, args.camera, fast_render=args.fast_render)


def place(args: Args, env, state):
    """Put the environment in a state (a row of the state set)."""
    if args.env == "cartpole":
        env.set_state(*map(float, state))
    elif args.env == "mountaincar":
        env.set_state(float(state[0]), float(state[1]))
    else:
        nq = env.model.nq
        env.set_state(state[:nq], state[nq:])


def labels(args: Args, script, states) -> tuple[np.ndarray, np.ndarray]:
    """(goal flag, graded truth) of every state, by the script's own ground truth."""
    env, goal, graded = scene_env(args, script, (64, 64)), [], []  # nothing is rendered
    for state in states:
        place(args, env, state)
        if args.env == "cartpole":
            goal.append(env.is_upright())
            graded.append(-abs(float(state[2])))
        elif args.env == "mountaincar":
            goal.append(env.at_goal)
            graded.append(float(state[0]))
        else:
            features = script.pose_features(env.data)
            goal.append(script.in_pose(features, args.task))
            graded.append(script.pose_score(features, args.task))
    env.close()
    return np.array(goal, dtype=bool), np.array(graded, dtype=np.float64)


def generated_states(args: Args, script) -> tuple[np.ndarray, list[str]]:
    """The state set of the flags (float64 rows) and where each state comes from."""
    if args.env in DEFAULT_GRID:
        first, second = args.grid or DEFAULT_GRID[args.env]
        if args.env == "cartpole":  # rows (x, x_dot, theta, theta_dot)
            grid = [(x, 0.0, theta, 0.0) for theta in np.linspace(-np.pi / 2, np.pi / 2, first)
                    for x in np.linspace(-2.4, 2.4, second)]
        else:  # rows (position, velocity)
            grid = [(x, v) for x in np.linspace(-1.2, 0.6, first) for v in np.linspace(-0.07, 0.07, second)]
        return np.array(grid, dtype=np.float64), ["grid"] * len(grid)
    import pose_contact_sheet as sheet

    env = script.CLIPHumanoidEnv((64, 64), fast_render=True)  # simulation only
    env.action_space.seed(args.state_seed)
    zeros = np.zeros(env.action_space.shape, np.float32)
    states, sources = [], []
    for name, act in (("zero actions", lambda: zeros), ("random actions", env.action_space.sample)):
        for episode in range(args.episodes):
            env.reset(seed=args.state_seed + episode)
            for _ in range(100):
                env.step(act())
                states.append(np.concatenate([env.data.qpos, env.data.qvel]))
                sources.append(name)
    for task in script.TASKS:  # every task's, so that one set (and its embeddings) serves every task
        for f in np.linspace(0.0, 1.0, args.path_points):
            script.set_pose(env, *script.path_pose(task, f))
            states.append(np.concatenate([env.data.qpos, env.data.qvel]))
            sources.append("landscape paths")
    for _, qpos, qvel in sheet.collect_states(env, sheet.Args(jitters=args.jitters, rollouts=0, seed=args.state_seed)):
        states.append(np.concatenate([qpos, qvel]))
        sources.append("hand-built poses")
    env.close()
    return np.array(states, dtype=np.float64), sources


def newest_checkpoint(run_dir: str) -> dict | None:
    """The newest checkpoint of a run folder that can be read, or None; the folder is left as it is (a live run may
    be writing its next one)."""
    for path in sorted(glob.glob(os.path.join(run_dir, "checkpoint_*.pt")), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # being written, or damaged: the one before it
            continue
    return None


def run_states(args: Args, script) -> tuple[np.ndarray, list[str]]:
    """--sample next observations of a run's replay buffer, as states of the flags' environment. The newest checkpoint
    that can be read is read and nothing in the folder is touched: the run may still be writing its next one."""
    checkpoint = newest_checkpoint(args.states)
    if checkpoint is None:
        fail(f"--states {args.states!r} holds no readable checkpoint (checkpoint_*.pt), so no replay buffer to take "
             "states from.")
    if not checkpoint.get("buffer") or len(checkpoint["buffer"]["next_obs"]) == 0:
        fail(f"--states {args.states!r}: its checkpoint holds no replay buffer (the run had --no-checkpoint-buffer, "
             "or had stored nothing yet).")
    observations = checkpoint["buffer"]["next_obs"].numpy()
    env = scene_env(args, script, (64, 64)) if args.env == "humanoid" else None
    expected = OBS_DIM.get(args.env) or env.observation_space.shape[0]
    if observations.shape[1] != expected:
        fail(f"--states {args.states!r} is not a {args.env} run: its observations have {observations.shape[1]} "
             f"numbers, {args.env}'s {expected}.")
    rng = np.random.default_rng(args.state_seed)
    rows = observations[np.sort(rng.choice(len(observations), min(args.sample, len(observations)), replace=False))]
    if env is not None:  # observation: qpos without x and y, then qvel, then forces
        nq, nv = env.model.nq, env.model.nv
        env.close()
        rows = np.concatenate([np.zeros((len(rows), 2)), rows[:, : nq - 2 + nv]], axis=1)
    return rows.astype(np.float64), ["run"] * len(rows)


def digest(*parts) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, sort_keys=True).encode())
    return hasher.hexdigest()[:20]


def state_set(args: Args, script) -> tuple[np.ndarray, list[str], bool]:
    """The state set, from the cache where it was made before: (states, sources, whether it was cached)."""
    if args.states is not None:  # a run's states: the checkpoint is the cache
        return *run_states(args, script), True
    sources = [inspect.getsource(script)] + ([inspect.getsource(importlib.import_module("pose_contact_sheet"))]
                                             if args.env == "humanoid" else [])  # the hand-built poses
    spec = dict(env=args.env, seed=args.state_seed, grid=args.grid or DEFAULT_GRID.get(args.env), episodes=args.episodes,
                jitters=args.jitters, path_points=args.path_points, source=digest(sources))
    path = os.path.join(args.cache_dir, f"states_{args.env}_{digest(spec)}.npz")
    if os.path.isfile(path):
        cached = np.load(path)
        return cached["states"], list(cached["sources"]), True
    states, sources = generated_states(args, script)
    os.makedirs(args.cache_dir, exist_ok=True)
    np.savez(path + ".tmp.npz", states=states, sources=np.array(sources))
    os.replace(path + ".tmp.npz", path)
    return states, sources, False


# --------------------------------------------------------------------------------------------------------------
# Embeddings, cached
# --------------------------------------------------------------------------------------------------------------
def load_model(args: Args, script, name: str, weights: str, label: str, device) -> dict:
    """One --clip-model with its weights, loaded by the script's own loader (its error sentences): a report's model
    entry, with what identifies it in the embedding cache."""
    import open_clip

    flags = SimpleNamespace(clip_model=name, clip_pretrained=weights, prompt=("a",), baseline_prompt=("b",),
                            alpha=0.0, clip_chunk_size=args.clip_chunk_size, clip_precision=args.clip_precision)
    encoder = script.load_clip_reward(flags, device)
    files = [f for f in (name, weights) if os.path.isfile(f)]  # a config's and a checkpoint's: by content, not name
    identity = [name, weights, [hashlib.sha256(open(f, "rb").read(1 << 20)).hexdigest() + str(os.path.getsize(f))
                                for f in files]]  # the first MB and the size
    return dict(label=label, identity=identity, tokenizer=open_clip.get_tokenizer(script.clip_architecture(flags)),
                encoder=encoder)


def scene_identity(args: Args, script) -> dict:
    """What the frames depend on besides the states: the scene's flags, the script's source (its renderer) and the
    libraries and OpenGL renderer that draw them (a CPU's llvmpipe and a GPU's driver draw different pixels)."""
    import open_clip
    import pygame

    renderer = None
    if args.env == "humanoid":
        import mujoco

        renderer = [script.require_gl(), mujoco.__version__]
    return dict(textured=args.textured, camera=args.camera, fast_render=args.fast_render, renderer=renderer,
                source=digest(inspect.getsource(script)), versions=[pygame.__version__, open_clip.__version__,
                                                                      torch.__version__])


def embeddings(args: Args, script, states, entry: dict) -> tuple[np.ndarray, dict]:
    """Unit image embeddings (float32) of every state's frame, from the cache or from CLIP; and timings. States
    with identical frames (velocities do not show) are embedded once."""
    encoder = entry["encoder"]
    key = digest(dict(env=args.env, model=entry["identity"], precision=encoder.precision, size=encoder.image_size,
                      scene=scene_identity(args, script)), states)
    path = os.path.join(args.cache_dir, f"embeddings_{args.env}_{key}.npy")
    if os.path.isfile(path):
        return np.load(path), dict(cached=True)
    start, env = time.perf_counter(), scene_env(args, script, encoder.image_size)
    frames, index = {}, np.empty(len(states), np.int64)  # frame digest -> (its row among the distinct frames, frame)
    for i, state in enumerate(states):
        place(args, env, state)
        frame = np.ascontiguousarray(env.render())
        index[i] = frames.setdefault(hashlib.sha1(frame.tobytes()).digest(), (len(frames), frame))[0]
    env.close()
    distinct = np.stack([frame for _, frame in frames.values()])
    rendered = time.perf_counter()
    chunks = [encoder.embed_images(distinct[i: i + encoder.chunk_size]).cpu().numpy()
              for i in range(0, len(distinct), encoder.chunk_size)]
    embedded = time.perf_counter()
    vectors = np.concatenate(chunks).astype(np.float32)[index]
    os.makedirs(args.cache_dir, exist_ok=True)
    np.save(path + ".tmp.npy", vectors)
    os.replace(path + ".tmp.npy", path)
    return vectors, dict(cached=False, frames=len(distinct), render_seconds=rendered - start,
                         clip_seconds=embedded - rendered, clip_frames_per_second=len(distinct) / (embedded - rendered))


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------
def figures(rewards, goal, graded) -> dict:
    """The figures of one candidate's rewards against the labels (the state set has goal and non-goal states)."""
    spread, gap = float(rewards.std()), float(rewards[goal].mean() - rewards[~goal].mean())
    return dict(epic_distance=epic_distance(rewards, goal), pearson=pearson(rewards, goal), auc=auc(rewards, goal),
                spearman_graded=spearman(rewards, graded), separation=gap / spread if spread > 0 else float("nan"),
                spread=spread, reward_5_95=[float(q) for q in np.quantile(rewards, [0.05, 0.95])],
                mean_goal=float(rewards[goal].mean()), mean_other=float(rewards[~goal].mean()))


def plot(rows, rewards, goal, default: int, path):
    """EPIC distance against α for each (model, prompts); the reward's distribution in and out of the goal for the
    best candidate and for the default one (rows[default]: the flags' prompts, the first model and α), each on its
    own axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(0, "best")] + [(default, "default")] * (default != 0)
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(6 + 4.5 * len(shown), 4.5), squeeze=False)
    for name in dict.fromkeys((r["model"], r["goal"], r["baseline"]) for r in rows):
        line = sorted((r for r in rows if (r["model"], r["goal"], r["baseline"]) == name), key=lambda r: r["alpha"])
        axes[0, 0].plot([r["alpha"] for r in line], [r["epic_distance"] for r in line], "o-",
                        label=f"{name[0]}: {' / '.join(name[1])}"[:70])
    axes[0, 0].set(xlabel="α", ylabel="EPIC distance to the goal label (lower is better)", title="EPIC distance against α")
    axes[0, 0].legend(fontsize=7)
    for ax, (i, tag) in zip(axes[0, 1:], shown):
        bins = np.linspace(rewards[i].min(), rewards[i].max() + 1e-12, 40)
        for mask, where in ((goal, "goal"), (~goal, "not goal")):
            if mask.any():
                ax.hist(rewards[i][mask], bins=bins, histtype="step", density=True, label=where)
        ax.set(xlabel="reward", ylabel="density", title=f"{tag}: {' / '.join(rows[i]['goal'])}, α={rows[i]['alpha']}"[:60])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cell(value) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def without_nan(value):
    """NaN as None (JSON's null: NaN is not JSON), in nested lists and dicts."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(args: Args, report: dict, rows: list):
    states = report["states"]
    by_source = ", ".join(f"{n} {source} ({states['goal_by_source'][source]} in the goal)"
                          for source, n in states["sources"].items())
    frames = {label: t["frames"] for label, t in report["timings"].items() if "frames" in t}
    lines = [f"# Reward report: {args.env}" + (f", {args.task}" if args.env == "humanoid" else ""), "",
             f"    {report['command']}", "",
             f"{states['count']} states: {by_source}" + (f"; distinct frames: {', '.join(f'{n} ({m})' for m, n in frames.items())}"
                                                        if frames else "") + ". Best first by EPIC distance. "
             "Random weights give meaningless figures.", ""]
    if states["goal"] < 30:
        lines += [f"**Only {states['goal']} states are in the goal: the figures rest on few of them.**", ""]
    lines += ["| # | model | goal prompt(s) | baseline | α | EPIC distance | AUC | Spearman (graded) | separation | spread |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i}{' (default)' if r['default'] else ''} | {r['model']} | {' / '.join(r['goal'])} | "
                     f"{' / '.join(r['baseline'])} | {r['alpha']} | {cell(r['epic_distance'])} | {cell(r['auc'])} | "
                     f"{cell(r['spearman_graded'])} | {cell(r['separation'])} | {r['spread']:.2e} |")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(args: Args, models: list[dict] | None = None) -> dict:
    """`models`: stand-ins for the CLIP models of the flags (tests): dicts of label, identity (for the cache),
    tokenizer and encoder (a CLIPReward whose model embeds the frames)."""
    script = importlib.import_module(SCRIPTS[args.env])
    check(args, script)
    candidates = read_candidates(args, script)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    states, sources, states_cached = state_set(args, script)
    goal, graded = labels(args, script, states)
    if goal.all() or not goal.any():
        fail(f"{'all' if goal.any() else 'none'} of the {len(states)} states are in the goal" +
             (f" of --task {args.task}" if args.env == "humanoid" else "") + ": there is nothing to tell apart.")
    print(f"{len(states)} states ({'cached' if states_cached else 'made'}), {int(goal.sum())} in the goal")

    rows, rewards, timings = [], [], {}
    labels_ = [m["label"] for m in models] if models is not None else model_labels(args)
    for k, label in enumerate(labels_):  # one model in memory at a time
        entry = models[k] if models is not None else load_model(
            args, script, args.clip_model[k], args.clip_pretrained[k], label, device)
        encoder = entry["encoder"]
        # The text side first (cheap): a candidate whose prompts embed alike stops before any frame is rendered.
        scorers = [(goal_prompts, baseline_prompts, alpha, script.CLIPReward(
            encoder.model, entry["tokenizer"], goal_prompts, baseline_prompts, alpha, encoder.device))
            for goal_prompts, baseline_prompts in candidates for alpha in args.alpha]
        vectors, timings[label] = embeddings(args, script, states, entry)
        print(f"{label}: " + ("embeddings from the cache" if timings[label]["cached"] else
              "{frames} frames rendered in {render_seconds:.1f} s, embedded in {clip_seconds:.1f} s "
              "({clip_frames_per_second:.1f} frames/s)".format(**timings[label])))
        vectors = torch.from_numpy(vectors).to(encoder.device)
        for j, (goal_prompts, baseline_prompts, alpha, reward_model) in enumerate(scorers):
            r = reward_model.rewards_from_embeddings(vectors).cpu().numpy().astype(np.float64)
            rows.append(dict(model=label, goal=goal_prompts, baseline=baseline_prompts, alpha=alpha,
                             default=j == 0, **figures(r, goal, graded)))  # default: the flags' prompts, first α
            rewards.append(r)
        del entry, encoder, scorers
    nan_last = lambda i: (math.isnan(rows[i]["epic_distance"]), np.nan_to_num(rows[i]["epic_distance"]),  # noqa: E731
                          -np.nan_to_num(rows[i]["auc"]))
    order = sorted(range(len(rows)), key=nan_last)
    ranked = [rows[i] for i in order]
    report = dict(command=command_line(args), env=args.env, task=args.task if args.env == "humanoid" else None,
                  models=labels_, states=dict(count=len(states), goal=int(goal.sum()),
                                              sources={s: sources.count(s) for s in dict.fromkeys(sources)},
                                              goal_by_source={s: int(goal[np.array(sources) == s].sum())
                                                              for s in dict.fromkeys(sources)}),
                  timings=timings, candidates=ranked)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(without_nan(report), f, indent=1)
    write_report(args, report, ranked)
    plot(ranked, [rewards[i] for i in order], goal, order.index(0), os.path.join(args.out, "report.png"))
    best = ranked[0]
    print(f"best: {best['model']}, {' / '.join(best['goal'])!r} vs {' / '.join(best['baseline'])!r}, α={best['alpha']}: "
          f"EPIC {cell(best['epic_distance'])}, AUC {cell(best['auc'])} -> {os.path.join(args.out, 'report.md')}")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
