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

Where each part is: the arguments, `Args`; the environment, `CLIPHumanoidEnv` (the paper's changes and camera)
and `make_env`; the reward, `CLIPReward`; the replay buffer, `ReplayBuffer`; the update, `SoftActorCritic.update`;
the loop, `main`. Below `main`, for reference: the run's bookkeeping (start-up with the OpenGL checks, resume,
evaluation logging, final results); the reward landscape's frames, greedy evaluation and the action baselines;
the scene's generated textures and XML rewrite; the pose detectors (`in_pose`, `pose_score`: the reward of
`--reward pose`; features, thresholds and hand-built poses: `TASKS`); the plumbing (flag checks, loading CLIP,
checkpoints, logging, results, figures).
"""

import atexit
import copy
import functools
import glob
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, fields
from typing import Annotated, Literal, NamedTuple

# Headless rendering: MuJoCo reads MUJOCO_GL when it is imported. EGL runs on a GPU and, through Mesa, on a CPU;
# where EGL is missing, set MUJOCO_GL=osmesa (require_gl, below main, says so).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402  (after MUJOCO_GL is set)
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import tyro  # noqa: E402
from gymnasium.envs.mujoco.humanoid_v5 import DEFAULT_CAMERA_CONFIG, HumanoidEnv  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


# The paper's eight humanoid tasks (its Table 1); TASKS, below main, gives each its prompt and pose detector.
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
    torch_threads: int = 0
    """CPU threads of torch (0: torch's default, every core); runs sharing a machine each need their share (run_all.sh --jobs N gives each cores / N)"""
    output_dir: str = "runs"
    """folder that receives `<run name>/` with TensorBoard logs, image strips, videos and the model"""
    capture_video: bool = False
    """if toggled, a deterministic evaluation episode is saved as a GIF with the CLIP reward drawn on it"""
    video_interval: int = 500_000
    """transitions between two evaluations (image strip; GIF with `--capture-video`)"""
    save_model: bool = False
    """if toggled, the actor and critic weights are saved to `<run>/<exp name>.cleanrl_model`"""
    checkpoint_interval: int = 200_000
    """transitions between two checkpoints (`<run>/checkpoint_<step>.pt`, also one at the end; the newest two are kept)"""
    checkpoint_buffer: bool = True
    """if toggled, checkpoints hold the replay buffer (2.9 GB at the default size); `--no-checkpoint-buffer`: a resumed run fills a fresh one for learning-starts transitions before it trains again"""
    resume: str | None = None
    """a run folder: go on from its newest readable checkpoint, with the run's own flags (others given are ignored)"""
    track: bool = False
    """if toggled, the run also goes to Weights & Biases (TensorBoard synced, flags, videos)"""
    wandb_project_name: str = "vlmrm"
    """the W&B project (with `--track`)"""
    wandb_entity: str | None = None
    """the W&B entity (team) of the project (with `--track`)"""

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
    """goal-baseline projection weight in [0, 1]: 0 = similarity to the goal (the cosine with one goal prompt), 1 = only the goal-baseline direction counts"""
    clip_model: str = "ViT-bigG-14"
    """open_clip architecture name (e.g. RN50, ViT-B-32, ViT-L-14, ViT-H-14, ViT-bigG-14), or an open_clip model config (.json)"""
    clip_pretrained: str = "laion2b_s39b_b160k"
    """open_clip pretrained tag of `--clip-model`, or the path of a local checkpoint file"""
    clip_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """CLIP image-encoder precision (autocast for bf16/fp16); `auto`: fp16 on a GPU (the authors' autocast), fp32 on a CPU"""
    clip_chunk_size: int = 0
    """most frames per CLIP forward pass; 0: 256 on a GPU (bounds its memory: 256 frames of ViT-bigG-14 need ~3 GB of fp16 activations), 32 on a CPU (passes of 16-64 ran fastest there; docs/speed.md)"""

    # Environment
    textured: bool = True
    """if toggled, the realistic scene (sky, stone floor, brushed-metal robot); `--no-textured`: gymnasium's stock look"""
    camera: Literal["paper", "stock"] = "paper"
    """`paper`: fixed in front of the robot (distance 3.5, look-at (0, 0, 1), elevation -10°, azimuth 180°); `stock`: gymnasium's"""
    fast_render: bool = False
    """if toggled, no shadows and no multisampling: software rendering (CPU) ~10x faster, but frames further from the authors' (no shadow, a darker floor, jagged edges; docs/faithfulness.md); default: MuJoCo's shadows and 4x multisampling, as the authors' scene"""
    num_envs: int = 32
    """the number of parallel environments (paper: 32)"""
    episode_length: int = 100
    """steps per episode; with the CLIP and pose rewards episodes end only by this time limit"""
    bootstrap_time_limit: bool = False
    """if toggled, the time-limit end is a truncation, bootstrapped (the textbook target for a time-unaware agent); default: terminal, as the paper's runs stored it (Q-values then sum about one episode of rewards)"""

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
    """steps of each env between two draws of the exploration matrices (with `--sde`; SB3's meaning: vector steps), and a draw at the start of every rollout (as SB3)"""
    log_std_init: float = -3.0
    """initial log standard deviation of the exploration weights (with `--sde`)"""
    eval_episodes: int = 4
    """deterministic evaluation episodes at each evaluation and at the end of training (0: no final evaluation; the periodic ones still run one)"""
    landscape_points: int = 21
    """poses on the reward landscape's path (standing to the task's pose) scored before training"""
    baseline_episodes: int = 32
    """episodes each of zero and of random actions that the task's detector judges at the start of CLIP and pose runs: the baselines (baselines/*, results.json) every learning curve is read against (0: none)"""


# ---------------------------------------------------------------------------------------------
# Environment: gymnasium's Humanoid (v5) as the paper set it up, in a realistic scene (its generated textures
# and XML rewrite, humanoid_xml and scene_file, are below main)
# ---------------------------------------------------------------------------------------------
PAPER_CAMERA = {"distance": 3.5, "lookat": np.array([0.0, 0.0, 1.0]), "elevation": -10.0, "azimuth": 180.0}


class CLIPHumanoidEnv(HumanoidEnv):
    """gymnasium's Humanoid-v5 with the paper's changes, rendered at CLIP's input size.

    - With the CLIP reward (`terminate=False`) falling does not end the episode; episodes end only
      by the time limit. `terminate=True` keeps gymnasium's termination (ground-truth runs).
    - With a `task` (CLIP and pose runs), the environment's reward is the ground truth of the task:
      1.0 while the robot is in the pose, else 0.0 (as CartPole's is 1 while the pole is upright), so
      an episode's return counts its steps in the pose. `info` carries `in_pose` and `pose_score`
      (half the in-pose flag, half a graded part: the reward of `--reward pose` runs). Without a task the reward is
      gymnasium's (forward progress + staying healthy - control cost: `--reward ground-truth`).
    - `textured`: sky, stone floor and a light brushed-metal robot, generated here; `camera="paper"`:
      fixed in the world in front of the robot; shadows and 4x multisampling unless `fast_render`. The
      model is written to a temporary folder.
    - Observations are gymnasium's (float64), passed on as float32.
    """

    def __init__(self, frame_size=(224, 224), textured: bool = True, camera: str = "paper",
                 terminate: bool = False, task: str | None = None, fast_render: bool = False):
        height, width = frame_size
        super().__init__(xml_file=scene_file(textured, tuple(frame_size), fast_render), render_mode="rgb_array",
                         width=width,
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
        # Each env renders in an OpenGL context of its own, but MuJoCo draws into whichever is current: make
        # this env's current (an evaluation env that was made and closed in between would leave none, and
        # every frame black).
        self.mujoco_renderer._get_viewer(self.render_mode).make_context_current()
        return super().render()

    def snapshot(self):  # all of MuJoCo's simulation data, for checkpoints
        return copy.deepcopy(self.data)

    def restore(self, snapshot):
        mujoco.mj_copyData(self.data, self.model, snapshot)


def make_env(episode_length: int, frame_size=(224, 224), textured: bool = True, camera: str = "paper",
             terminate: bool = False, task: str | None = None, fast_render: bool = False):
    """A thunk for the vector env; `task`: the reward is 1 in that task's pose, else 0 (see CLIPHumanoidEnv)."""

    def thunk():
        env = CLIPHumanoidEnv(frame_size, textured, camera, terminate, task, fast_render)
        env = gym.wrappers.TimeLimit(env, max_episode_steps=episode_length)
        float32_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
        return gym.wrappers.TransformObservation(env, lambda obs: obs.astype(np.float32), float32_space)

    return thunk


# ==== BEGIN SHARED BLOCK: clip-reward (identical in every script; tests/test_shared_blocks.py) ====
class CLIPReward(nn.Module):
    """The VLM-RM reward (paper, section 3). `rewards = reward_model(frames)`: uint8 (N, H, W, 3) -> (N,).

    s = unit image embedding of a frame, g / b = mean unit text embedding of the goal / baseline
    prompts, d = g - b, P = d dᵀ / ‖d‖², M = α P + (1 - α) I, and

        R(s) = 1 - ½ ‖M (s - g)‖²

    With α = 0 and one goal prompt, R = s·g (cosine similarity); with α = 1 only the part of s - g along
    the baseline-to-goal direction counts. The rewards are a float32 tensor on the model's device.
    """

    def __init__(self, model, tokenizer, goal_prompts, baseline_prompts, alpha: float,
                 device="cpu", chunk_size: int = 256, precision: str = "fp32"):
        super().__init__()
        self.model, self.device, self.chunk_size, self.precision = model, torch.device(device), chunk_size, precision
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.image_size = (cfg["size"],) * 2 if isinstance(cfg["size"], int) else tuple(cfg["size"])  # (height, width)
        self.register_buffer("mean", torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1))
        if not goal_prompts or not baseline_prompts:  # the mean of no embedding would be NaN
            raise SystemExit("error: the CLIP reward needs at least one goal prompt and one baseline prompt.")
        goal, baseline = self.embed_prompts(tokenizer, goal_prompts), self.embed_prompts(tokenizer, baseline_prompts)
        direction = goal - baseline
        if alpha > 0 and direction.norm() < 1e-6:
            raise SystemExit("error: --prompt and --baseline-prompt give the same embedding, so --alpha > 0 has no "
                             "direction to project on: choose a baseline that differs from the goal, or --alpha 0.")
        projection = torch.outer(direction, direction) / direction.norm().clamp_min(1e-12) ** 2
        self.register_buffer("goal", goal)
        self.register_buffer("baseline", baseline)
        self.register_buffer("projection", alpha * projection + (1 - alpha) * torch.eye(len(goal), device=self.device))

    @torch.no_grad()
    def embed_prompts(self, tokenizer, prompts) -> torch.Tensor:
        tokens = tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).mean(dim=0)

    @staticmethod
    def as_frames(frames) -> np.ndarray:
        """Any uint8 RGB frames: an (N, H, W, 3) or (H, W, 3) array or a list of (H, W, 3) arrays, in any memory
        layout (MuJoCo's renderer returns frames flipped in memory, which torch cannot wrap) -> (N, H, W, 3)."""
        if isinstance(frames, torch.Tensor):  # e.g. frames already on the GPU
            return frames if frames.ndim == 4 else frames[None]
        if isinstance(frames, (list, tuple)):
            frames = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)  # no frames: no rewards
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
            raise ValueError(f"CLIPReward takes uint8 RGB frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        return np.ascontiguousarray(frames[None] if frames.ndim == 3 else frames)

    @torch.no_grad()
    def embed_images(self, frames) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> unit image embeddings (N, D), float32; bf16/fp16 run under autocast."""
        x = torch.as_tensor(self.as_frames(frames), device=self.device).permute(0, 3, 1, 2).float().div_(255)
        if tuple(x.shape[-2:]) != self.image_size:  # the scripts render at this size already
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False).clamp_(0, 1)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return F.normalize(self.model.encode_image((x - self.mean) / self.std).float(), dim=-1)

    def rewards_from_embeddings(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        residual = (image_embeddings - self.goal) @ self.projection
        return 1.0 - 0.5 * residual.pow(2).sum(dim=-1)

    @torch.no_grad()
    def forward(self, frames) -> torch.Tensor:
        """In CLIP passes of at most `chunk_size` frames: a pass's activation memory grows with its frames."""
        frames = self.as_frames(frames)
        rewards = [self.rewards_from_embeddings(self.embed_images(frames[i: i + self.chunk_size]))
                   for i in range(0, len(frames), self.chunk_size)]
        return torch.cat(rewards) if rewards else torch.zeros(0, device=self.device)
# ==== END SHARED BLOCK: clip-reward ====


# ==== BEGIN SHARED BLOCK: replay-buffer (identical in every script; tests/test_shared_blocks.py) ====
class ReplayBuffer:
    """Transitions in a ring. The reward the agent learns from is NaN until CLIP has scored the frame (a
    transition sampled too early makes the losses NaN, not silently stale); the environment's reward, the
    ground truth, is kept beside it for the logs."""

    def __init__(self, size: int, obs_dim: int, action_shape: tuple, action_dtype, device):
        self.size, self.device, self.pos, self.full = size, device, 0, False
        self.obs, self.next_obs = np.zeros((size, obs_dim), np.float32), np.zeros((size, obs_dim), np.float32)
        self.actions = np.zeros((size, *action_shape), dtype=action_dtype)
        self.rewards, self.true_rewards = np.full(size, np.nan, np.float32), np.zeros(size, np.float32)
        self.terminations = np.zeros(size, np.float32)  # 1: the target does not bootstrap from next_obs

    def add(self, obs, next_obs, actions, rewards, true_rewards, terminations) -> np.ndarray:
        """Store a batch of transitions; returns their slots."""
        slots = (self.pos + np.arange(len(obs))) % self.size
        self.obs[slots], self.next_obs[slots], self.actions[slots] = obs, next_obs, actions
        self.rewards[slots], self.true_rewards[slots], self.terminations[slots] = rewards, true_rewards, terminations
        self.full, self.pos = self.full or self.pos + len(obs) >= self.size, (self.pos + len(obs)) % self.size
        return slots

    def sample(self, batch_size: int):
        idx = np.random.randint(0, self.size if self.full else self.pos, size=batch_size)
        return tuple(torch.as_tensor(a[idx], device=self.device)
                     for a in (self.obs, self.actions, self.rewards, self.next_obs, self.terminations))
# ==== END SHARED BLOCK: replay-buffer ====


# ---------------------------------------------------------------------------------------------
# SAC
# ---------------------------------------------------------------------------------------------
# ==== BEGIN SHARED BLOCK: sac (identical in every script; tests/test_shared_blocks.py) ====
class ScaleToUnit(nn.Module):
    """Maps bounded observations from their bounds to [-1, 1]; unbounded ones pass unchanged (MountainCar's
    velocity, ±0.07, would otherwise be invisible next to its position, -1.2..0.6)."""

    def __init__(self, observation_space):
        super().__init__()
        low, high = (torch.as_tensor(b, dtype=torch.float32) for b in (observation_space.low, observation_space.high))
        bounded = torch.isfinite(low) & torch.isfinite(high)
        self.register_buffer("centre", torch.where(bounded, (high + low) / 2, 0.0))
        self.register_buffer("half_range", torch.where(bounded, (high - low) / 2, 1.0))
        self.identity = not bounded.any()  # the humanoid's: nothing to scale, and nothing to spend on it

    def forward(self, obs):
        return obs if self.identity else (obs - self.centre) / self.half_range


def mlp(inputs: int, hidden_size: int, outputs: int | None = None) -> nn.Sequential:
    """Two ReLU layers of hidden_size (then a linear layer to `outputs`, if given)."""
    layers = [nn.Linear(inputs, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.Linear(hidden_size, outputs)] if outputs else []))


class SoftQNetwork(nn.Module):
    def __init__(self, observation_space, action_dim: int, hidden_size: int):
        super().__init__()
        self.scale = ScaleToUnit(observation_space)
        self.network = mlp(observation_space.shape[0] + action_dim, hidden_size, 1)

    def forward(self, obs, actions):
        return self.network(torch.cat([self.scale(obs), actions], dim=1)).squeeze(1)


LOG_STD_MIN, LOG_STD_MAX = -5, 2  # range of the state-dependent log std without gSDE (as CleanRL)


class Actor(nn.Module):
    """a = tanh(u), scaled to the action bounds, with u = μ(s) + noise.

    With gSDE (Raffin et al., 2022, used by the authors' code) the noise is φ(s)ᵀW: φ(s) the last
    hidden layer, W ~ N(0, σ_W²) drawn at each rollout's start and every `sde_sample_freq` steps.
    Between draws the noise is a fixed function of the state, so MountainCar's car keeps pushing the
    same way in the same situation and can rock itself up the hill; noise drawn anew every step mostly
    cancels out (the task's classic exploration trap). Given φ(s), the noise is Gaussian with variance
    φ(s)² · σ_W² per action, which gives the log-probability; its gradient reaches the trunk through
    φ(s) too, as in SB3's SAC (`learn_features=True`). Without gSDE: u ~ N(μ(s), σ(s)²).
    """

    def __init__(self, observation_space, action_space, hidden_size: int, sde: bool, log_std_init: float):
        super().__init__()
        action_dim, self.sde = int(np.prod(action_space.shape)), sde
        self.trunk = nn.Sequential(ScaleToUnit(observation_space), *mlp(observation_space.shape[0], hidden_size))
        self.mean = nn.Linear(hidden_size, action_dim)
        self.log_std = (nn.Parameter(torch.full((hidden_size, action_dim), log_std_init)) if sde  # log σ_W
                        else nn.Linear(hidden_size, action_dim))
        low, high = (torch.as_tensor(bound, dtype=torch.float32) for bound in (action_space.low, action_space.high))
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def sample_exploration(self, *batch_shape) -> torch.Tensor:
        """Standard normal ε for gSDE's weights W = σ_W ⊙ ε: (*batch_shape, hidden, action_dim)."""
        return torch.randn(*batch_shape, *self.log_std.shape, device=self.log_std.device)

    def forward(self, obs, exploration=None, deterministic: bool = False):
        """Returns (action, log π(action | obs)), the action sampled; `deterministic`: the mean action, which
        draws no random numbers (an evaluation must not change the run it evaluates), and no log π.

        `exploration`: gSDE's ε, one per env (num_envs, hidden, action_dim) during rollouts, or one
        (hidden, action_dim) shared by a whole batch (a gradient step draws one for a and a', as SB3).
        """
        features = self.trunk(obs)
        mean = self.mean(features).clamp(-2.0, 2.0) if self.sde else self.mean(features)  # SB3's clip_mean
        if deterministic:
            return torch.tanh(mean) * self.action_scale + self.action_bias, None
        if self.sde:
            phi, sigma_w = features, self.log_std.exp()
            eps = self.sample_exploration() if exploration is None else exploration
            noise = (phi.unsqueeze(-2) @ (sigma_w * eps)).squeeze(-2)
            std = (phi.pow(2) @ sigma_w.pow(2) + 1e-6).sqrt()
        else:
            std = (LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(self.log_std(features)) + 1)).exp()
            noise = std * torch.randn_like(mean)
        u = mean + noise
        squashed = torch.tanh(u)
        # Change of variables through tanh. The density is that of the action in [-1, 1], before scaling
        # to the bounds (as SB3), so the entropy target -action_dim means the same in every env.
        log_prob = torch.distributions.Normal(mean, std).log_prob(u) - torch.log(1 - squashed.pow(2) + 1e-6)
        return squashed * self.action_scale + self.action_bias, log_prob.sum(dim=-1)


class SoftActorCritic:
    """SAC (Haarnoja et al., 2018) as SB3 runs it, the library of the paper's code: every gradient step
    updates both critics, then the actor, then the entropy coefficient (with `--autotune`), then moves the
    target critics towards the critics by `tau`. Three details differ from SB3 (docs/faithfulness.md): the
    coefficient's place in that order, the critics' loss not halved, the log std's bounds without gSDE."""

    def __init__(self, observation_space, action_space, args, device):
        action_dim = int(np.prod(action_space.shape))
        self.gamma, self.tau, self.autotune, self.ent_coef = args.gamma, args.tau, args.autotune, args.ent_coef
        self.actor = Actor(observation_space, action_space, args.hidden_size, args.sde, args.log_std_init).to(device)
        self.qf1, self.qf2, self.qf1_target, self.qf2_target = (
            SoftQNetwork(observation_space, action_dim, args.hidden_size).to(device) for _ in range(4))
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=args.learning_rate)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.learning_rate)
        if args.autotune:  # SB3's "auto": the coefficient starts at 1 and is tuned towards entropy -action_dim
            self.target_entropy, self.ent_coef = -float(action_dim), 1.0
            self.log_ent_coef = torch.zeros(1, requires_grad=True, device=device)
            self.ent_coef_optimizer = torch.optim.Adam([self.log_ent_coef], lr=args.learning_rate)

    @torch.no_grad()
    def td_target(self, rewards, next_obs, terminations, exploration=None):
        """Soft Bellman target r + γ (min Q_target(s', a') - α log π(a'|s')), a' ~ π(s'), not bootstrapped
        from a transition stored as terminal (by default also an episode's last, as the paper)."""
        next_actions, next_log_pi = self.actor(next_obs, exploration)
        next_q = torch.min(self.qf1_target(next_obs, next_actions), self.qf2_target(next_obs, next_actions))
        return rewards + self.gamma * (1 - terminations) * (next_q - self.ent_coef * next_log_pi)

    def update(self, obs, actions, rewards, next_obs, terminations) -> dict:
        # gSDE: one noise matrix per gradient step, shared by a' in the target and a in the actor's loss (SB3).
        exploration = self.actor.sample_exploration() if self.actor.sde else None
        # Critics: regress both onto the soft Bellman target of the target critics.
        td_target = self.td_target(rewards, next_obs, terminations, exploration)
        qf1_values, qf2_values = self.qf1(obs, actions), self.qf2(obs, actions)
        qf_loss = F.mse_loss(qf1_values, td_target) + F.mse_loss(qf2_values, td_target)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()

        # Actor: maximise the soft value of its own (reparameterised) actions. The gradient flows through the
        # critics into the actions; the critics' own weights need none here (~11% of an update's time saved).
        self.qf1.requires_grad_(False), self.qf2.requires_grad_(False)
        pi, log_pi = self.actor(obs, exploration)
        actor_loss = (self.ent_coef * log_pi - torch.min(self.qf1(obs, pi), self.qf2(obs, pi))).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        self.qf1.requires_grad_(True), self.qf2.requires_grad_(True)

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

    def checkpoint(self) -> dict:
        """Networks, targets, optimizers and the entropy coefficient, for checkpoints (`restore` puts them back)."""
        parts = ["actor", "qf1", "qf2", "qf1_target", "qf2_target", "q_optimizer", "actor_optimizer"]
        parts += ["ent_coef_optimizer"] if self.autotune else []
        state = {name: getattr(self, name).state_dict() for name in parts}
        return dict(state, ent_coef=self.ent_coef, log_ent_coef=self.log_ent_coef if self.autotune else None)

    def restore(self, state: dict):
        for name, value in state.items():
            if isinstance(value, dict):
                getattr(self, name).load_state_dict(value)
        self.ent_coef = state["ent_coef"]
        if self.autotune:
            with torch.no_grad():
                self.log_ent_coef.copy_(state["log_ent_coef"])
# ==== END SHARED BLOCK: sac ====


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def main(args: Args, reward_model: CLIPReward | None = None) -> dict:
    """Train; returns the final figures. `reward_model` replaces the one built from the flags (tests)."""
    state = load_checkpoint(args.resume) if args.resume else None  # --resume: the run's own flags and state
    args = resumed_args(Args, state, args.resume) if state else args
    flags, device, reward_model = start_up(args, reward_model)  # flag checks, seeds, OpenGL, the device, CLIP
    uses_clip = args.reward == "clip"
    judged = args.reward != "ground-truth"  # the task's pose detector judges every step (CLIP and pose runs)
    frame_size = reward_model.image_size if uses_clip else (224, 224)
    run_dir, writer, baselines = open_run(args, state, reward_model, frame_size)  # and the baselines, the landscape

    # Autoreset off: every step is a real transition whose next_obs and frame are the state reached, also at
    # the end of an episode; finished envs are reset by hand. (The authors' code rendered after the vector
    # env had auto-reset, and scored the next episode's first frame instead.)
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.episode_length, frame_size, args.textured, args.camera, terminate=not judged,
                  task=args.task if judged else None, fast_render=args.fast_render) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    observation_space, action_space = envs.single_observation_space, envs.single_action_space
    agent = SoftActorCritic(observation_space, action_space, args, device)
    actor = agent.actor  # acts in the envs; agent.update trains it
    rb = ReplayBuffer(args.buffer_size, observation_space.shape[0], action_space.shape, np.float32, device)
    # The environment's reward of a judged run is the in-pose flag, so an episode's ground-truth return counts
    # its steps in the pose, and success is the paper's: in the pose for at least half of the episode. Walking
    # (ground-truth runs) has no success criterion.
    is_success = (lambda steps_in_pose, length: steps_in_pose >= SUCCESS_FRACTION * length) if judged else None

    # The loop's position: transitions collected, rollouts ended, gradient steps taken, the next evaluation.
    global_step = rollouts_done = updates_done = next_eval = 0
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    episode_slots, successes, losses = [[] for _ in range(args.num_envs)], deque(maxlen=10), {}
    training_starts = args.learning_starts  # a resume into a fresh buffer moves it (restore_run)
    if state:  # everything as it was at the checkpoint: the run goes on exactly as an uninterrupted one
        global_step, rollouts_done, updates_done, next_eval = (state[key] for key in POSITION)
        obs, episode_slots, successes, losses, training_starts = restore_run(state, args, agent, envs, rb)
    exploration, rollout_step, to_score, finished = None, 0, [], []  # gSDE's noise; this rollout's steps and frames
    start_time, start_step, seconds_before = time.time(), global_step, state["seconds"] if state else 0.0
    elapsed = lambda: seconds_before + time.time() - start_time  # noqa: E731  (of this session and those before)
    checkpoints_done = global_step // args.checkpoint_interval
    with StopRequests() as stop:
        while global_step < args.total_timesteps:
            # gSDE's noise, one matrix per env, drawn as SB3 does: at each rollout's start, then every sde-sample-freq steps.
            if args.sde and rollout_step % args.sde_sample_freq == 0:
                exploration = actor.sample_exploration(args.num_envs)
            if global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                with torch.no_grad():
                    actions = actor(torch.as_tensor(obs, device=device), exploration)[0].cpu().numpy()
            next_obs, true_rewards, terminations, truncations, infos = envs.step(actions)
            # The reward to learn from: CLIP's (to come), the graded pose detector's (pose runs) or gymnasium's.
            rewards = np.nan if uses_clip else infos["pose_score"] if args.reward == "pose" else true_rewards
            # The paper's envs set terminated=True at the time limit, so SB3 never bootstrapped from an episode's
            # last state; --bootstrap-time-limit stores the time limit as a truncation instead (bootstrapped).
            dones = terminations | truncations
            slots = rb.add(obs, next_obs, actions, rewards, true_rewards,
                           terminations if args.bootstrap_time_limit else dones)
            if uses_clip:
                to_score.append((slots, np.stack(envs.call("render"))))
            global_step, rollout_step = global_step + args.num_envs, rollout_step + 1
            for i, slot in enumerate(slots):  # each env's episode so far, as replay slots
                episode_slots[i].append(slot)
                if dones[i]:
                    finished.append((global_step, episode_slots[i]))
                    episode_slots[i] = []
            obs = envs.reset(options={"reset_mask": dones})[0] if dones.any() else next_obs

            # A rollout ends each time the step count passes a multiple of train-frequency (as SB3's do), and at the
            # end of the run: CLIP scores its frames (--clip-chunk-size at a time), the finished episodes are logged,
            # and a training phase of gradient-steps updates follows each rollout that ends after learning starts
            # (rollouts and updates counted in transitions: the updates per transition do not depend on --num-envs).
            # A last partial rollout (--total-timesteps not a multiple of train-frequency) is scored, not trained on.
            rollout_ends = global_step // args.train_frequency > rollouts_done or global_step >= args.total_timesteps
            if rollout_ends:
                rollouts_before, rollouts_done, rollout_step = rollouts_done, global_step // args.train_frequency, 0
                if to_score:
                    slots, frames = (np.concatenate(parts) for parts in zip(*to_score))
                    rb.rewards[slots] = reward_model(frames).cpu().numpy()
                successes.extend(log_rollout(writer, rb, finished, is_success, uses_clip, global_step))
                for end, slots in finished if judged else ():  # the environment's reward is the in-pose flag
                    writer.add_scalar("charts/pose_fraction", rb.true_rewards[slots].mean(), end)
                to_score, finished = [], []
                waiting = training_starts // args.train_frequency  # rollouts before the first training phase
                phases = max(rollouts_done - waiting, 0) - max(rollouts_before - waiting, 0)
                for _ in range(args.gradient_steps * phases):
                    losses = agent.update(*rb.sample(args.batch_size))
                if phases:
                    updates_done += args.gradient_steps * phases
                    log_training_phase(writer, args, actor, losses, successes, global_step, start_step, start_time)

            if global_step >= next_eval and global_step > args.learning_starts:
                evaluate_and_log(actor, reward_model, args, device, writer, run_dir, max(args.eval_episodes, 1),
                                 args.seed, global_step)
                next_eval = global_step + args.video_interval

            # Checkpoints at the end of a rollout (nothing waits for CLIP then): every checkpoint-interval
            # transitions, at the end, and when SIGTERM or Ctrl-C asked the run to stop.
            if rollout_ends and (stop or global_step // args.checkpoint_interval > checkpoints_done
                                 or global_step >= args.total_timesteps):
                checkpoints_done = global_step // args.checkpoint_interval
                save_checkpoint(run_dir, dict(
                    args=flags, seconds=elapsed(), global_step=global_step, rollouts_done=rollouts_done,
                    updates_done=updates_done, next_eval=next_eval, training_starts=training_starts,
                    agent=agent.checkpoint(), obs=obs, episode_slots=episode_slots, successes=list(successes),
                    losses=losses, **random_and_env_state(envs, rb, args.checkpoint_buffer)))
                if stop:
                    stop_after_checkpoint(stop, global_step, run_dir, writer, args)
    envs.close()
    sps = global_step / elapsed()  # training only: not the final evaluation
    results = evaluate_and_log(actor, reward_model, args, device, writer, run_dir, args.eval_episodes,
                               args.seed + 10_000, global_step)
    final = final_results(results, args, successes, losses, baselines, rb, reward_model, global_step=global_step,
                          gradient_steps_done=updates_done, run_dir=run_dir, sps=sps, wall_seconds=elapsed())
    write_results(run_dir, args, final, agent.state_dict())
    close_writer(writer, args)
    return final


# ---------------------------------------------------------------------------------------------
# Run bookkeeping, below the method: start-up, resume, evaluation logging, final results, OpenGL checks
# ---------------------------------------------------------------------------------------------
# Allowed values of the numeric flags, checked before anything is loaded.
RANGES = dict(alpha="[0, 1]", num_envs="[1, inf)", episode_length="[1, inf)", total_timesteps="[1, inf)",
              learning_rate="(0, inf)", buffer_size="[1, inf)", gamma="[0, 1]", tau="(0, 1]", batch_size="[1, inf)",
              learning_starts="[0, inf)", train_frequency="[1, inf)", gradient_steps="[1, inf)", hidden_size="[1, inf)",
              ent_coef="[0, inf)", sde_sample_freq="[1, inf)", log_std_init="(-inf, inf)", eval_episodes="[0, inf)",
              video_interval="[1, inf)", clip_chunk_size="[0, inf)", landscape_points="[2, inf)",
              checkpoint_interval="[1, inf)", torch_threads="[0, inf)", baseline_episodes="[0, inf)")


def goal_prompts(args) -> tuple[str, ...]:
    """The goal prompt(s): `--prompt` where given, else the paper's prompt for `--task`."""
    return args.prompt or (TASKS[args.task].prompt,)


def start_up(args, reward_model: CLIPReward | None) -> tuple:
    """The goal prompts filled in and the flags checked before anything loads; then OpenGL and the camera checked,
    every random stream seeded and the device chosen; a CLIP run loads its reward model (unless a test gave one).
    Returns the flags to keep, the device and the model."""
    args.prompt = goal_prompts(args)
    check_flags(args, RANGES)
    flags = dict(vars(args))  # for checkpoints: the flags as the run began
    uses_clip = args.reward == "clip"
    other_task = [name for name, task in TASKS.items() if args.prompt == (task.prompt,) and name != args.task]
    if uses_clip and other_task:
        print(f"note: --prompt is the paper's prompt for --task {other_task[0]}, but the {args.task} detector "
              f"judges success; add --task {other_task[0]} to judge it as that task.")
    gl_renderer = require_gl()
    require_configured_camera(args.camera)
    seed_everything(args.seed, args.torch_deterministic)
    if args.torch_threads:  # else torch spins a thread on every core, and runs sharing a machine slow each other
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"MuJoCo renders with OpenGL: {gl_renderer} (MUJOCO_GL={os.environ['MUJOCO_GL']})")
    if warning := software_gl_warning(gl_renderer, device):
        print(warning)
    if uses_clip and reward_model is None:
        reward_model = load_clip_reward(args, device)
    return flags, device, reward_model


def open_run(args, state: dict | None, reward_model: CLIPReward | None, frame_size) -> tuple:
    """The run's folder (a resumed run's own), its TensorBoard writer and its action baselines; a new CLIP run
    also logs its reward landscape (does the prompt rank the goal pose highest?)."""
    run_name = f"Humanoid__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.normpath(args.resume or os.path.join(args.output_dir, run_name))
    writer = open_writer(run_dir, args, resume_step=state["global_step"] + 1 if state else None)
    baselines = log_baselines(args, writer, logged_before=bool(state))  # what every learning curve is read against
    if args.reward == "clip" and not state:
        log_reward_landscape(args, reward_model, frame_size, writer, run_dir)
    return run_dir, writer, baselines


# The loop's position in a checkpoint (main reads it back under these names).
POSITION = ("global_step", "rollouts_done", "updates_done", "next_eval")


def restore_run(state: dict, args, agent, envs, rb) -> tuple:
    """The agent, random streams, envs and replay buffer as they were at the checkpoint; returns the loop's
    episodes in progress, recent successes, last losses and the transition count where training starts. A
    checkpoint without its buffer (--no-checkpoint-buffer) starts new episodes into a fresh buffer, and training
    waits for learning-starts new transitions."""
    agent.restore(state["agent"])
    restore_random_and_env_state(state, envs, rb)
    obs, episode_slots, training_starts = state["obs"], state["episode_slots"], state["training_starts"]
    if state["buffer"] is None:
        obs, episode_slots = envs.reset()[0], [[] for _ in range(args.num_envs)]
        training_starts = state["global_step"] + args.learning_starts  # exploration keeps the run's own
    return obs, episode_slots, deque(state["successes"], maxlen=10), state["losses"], training_starts


def log_baselines(args, writer, logged_before: bool) -> dict:
    """The zero- and random-action figures on the task's detector, printed and (once per run) logged: a learned
    pose counts only where it beats them."""
    judged = args.reward != "ground-truth"
    baselines = action_baselines(args) if judged and args.baseline_episodes else {}
    if baselines:
        print(f"baselines on the {args.task} detector: " + ", ".join(f"{k} {v:.2f}" for k, v in baselines.items()))
    if not logged_before:  # a resumed run logged them when it began
        for name, value in baselines.items():
            writer.add_scalar(f"baselines/{name}", value, 0)
    return baselines


def log_reward_landscape(args, reward_model, frame_size, writer, run_dir: str):
    """Before training, the reward landscape (does the prompt rank the goal pose highest?) and the run's time
    estimate, logged and printed so that a prompt that cannot work shows before the run is paid for."""
    fractions, frames, posed = landscape_frames(args.task, frame_size, args.textured, args.camera,
                                                args.landscape_points, args.fast_render)
    rewards = reward_model(frames).cpu().numpy()
    origin = "a squat" if TASKS[args.task].start else "standing"
    writer.add_figure("reward_landscape", plot_reward_landscape(
        fractions, rewards, posed, f"joint angles from {origin} (0) to the {args.task} pose (1)",
        f"{args.task} (detector)", f"{args.prompt[0]!r}, alpha={args.alpha}",
        os.path.join(run_dir, "reward_landscape.png")))
    gap = rewards[posed].mean() - rewards[~posed].mean()
    writer.add_scalar("landscape/in_pose_minus_out", gap, 0)
    scene = ["--task", args.task, "--camera", args.camera] + ["--no-textured"] * (not args.textured) + [
        "--fast-render"] * args.fast_render
    print(f"reward landscape: mean CLIP reward in the {args.task} pose - out of it = {gap:.4g} (positive: the prompt "
          f"can work); on ~2,000 labelled states, with other prompts and alphas: "
          f"{reward_report_command('humanoid', args, args.prompt, *scene)}")
    estimate_run_time(reward_model, frames, args)


def evaluate_and_log(actor, reward_model, args, device, writer, run_dir: str, count: int, seed: int,
                     step: int) -> list:
    """Deterministic episodes, logged as eval/*; the first is saved as an image strip (and a GIF with
    --capture-video) where frames can be rendered."""
    judged, uses_clip = args.reward != "ground-truth", args.reward == "clip"
    results = evaluate(actor, reward_model, args, device, count, seed)
    for tag, key, logged in [("success_rate", "success", judged), ("pose_fraction", "pose_fraction", judged),
                             ("clip_return", "clip_return", uses_clip),
                             ("last_frame_clip_reward", "last_frame_clip_reward", uses_clip),
                             ("episodic_return", "true_return", not judged)]:
        if results and logged:
            writer.add_scalar(f"eval/{tag}", np.mean([r[key] for r in results]), step)
    if results and judged:  # the episodes start only reset noise (0.01) apart: do they differ at all?
        fractions = [r["pose_fraction"] for r in results]
        writer.add_scalar("eval/distinct_pose_fractions", len(set(fractions)), step)
        writer.add_scalar("eval/pose_fraction_spread", max(fractions) - min(fractions), step)
    if results and results[0]["frames"]:
        from PIL import Image

        strip = image_strip(results[0]["frames"], results[0]["clip_rewards"], results[0]["in_pose"])
        writer.add_image("eval/episode_strip", strip, step, dataformats="HWC")
        os.makedirs(os.path.join(run_dir, "strips"), exist_ok=True)
        Image.fromarray(strip).save(os.path.join(run_dir, "strips", f"eval_step{step}.png"))
        if args.capture_video:
            save_video(results[0]["frames"], results[0]["clip_rewards"],
                       os.path.join(run_dir, "videos", f"eval_step{step}.gif"), args.track)
    return results


def log_training_phase(writer, args, actor, losses: dict, successes, step: int, start_step: int, start_time: float):
    """After each training phase: the losses, the speed (this session's) and gSDE's sigma logged, and the run's
    progress line."""
    sps = int((step - start_step) / (time.time() - start_time))
    for name, value in losses.items():
        writer.add_scalar(f"losses/{name}", value, step)
    writer.add_scalar("charts/SPS", sps, step)
    if args.sde:
        writer.add_scalar("charts/sde_sigma", actor.log_std.exp().mean().item(), step)
    recent = f", success (last 10 episodes) {np.mean(successes):.2f}" if successes else ""
    print(f"{progress(step, args.total_timesteps, sps)}, td_loss {losses['td_loss']:.4g}, "
          f"q {losses['q_values']:.4g}{recent}", flush=True)


def final_results(results: list, args, successes, losses: dict, baselines: dict, rb, reward_model, **run) -> dict:
    """The run's final figures (the final evaluation's, training's and `run`'s: steps, speed, time), printed in one
    line; results.json and run_all.sh's summary read them."""
    judged, uses_clip = args.reward != "ground-truth", args.reward == "clip"
    mean = lambda key: float(np.mean([r[key] for r in results])) if results else float("nan")  # noqa: E731
    final = dict(eval_success_rate=mean("success"), eval_pose_fraction=mean("pose_fraction"),
                 train_success_rate_last10=np.mean(successes) if successes else np.nan,
                 eval_episodic_return=mean("true_return"), eval_clip_return=mean("clip_return"),
                 eval_last_frame_clip_reward=mean("last_frame_clip_reward"), **losses, **run,
                 epic_distance=reward_agreement(rb)[1] if uses_clip else np.nan,
                 precision=reward_model.precision if uses_clip else None, **baselines)
    success = (f"success rate {final['eval_success_rate']:.2f} (in the {args.task} pose for at least half of the "
               f"episode), pose fraction {final['eval_pose_fraction']:.2f}, " if judged else "")
    clip = (f", CLIP return {final['eval_clip_return']:.4g}, last-frame CLIP reward "
            f"{final['eval_last_frame_clip_reward']:.4g}" if uses_clip else "")
    print(f"eval: {success}return {final['eval_episodic_return']:.1f}{clip}")
    return final


def require_gl() -> str:
    """Stop with one sentence, before anything expensive is loaded, where MuJoCo cannot render headless here;
    returns the OpenGL renderer's name (llvmpipe: Mesa's software renderer, on the CPU)."""
    try:
        context = mujoco.GLContext(16, 16)
        context.make_current()
        from OpenGL import GL

        renderer = (GL.glGetString(GL.GL_RENDERER) or b"unknown").decode()
        context.free()
    except Exception as e:
        fail(f"MuJoCo cannot render headless with MUJOCO_GL={os.environ['MUJOCO_GL']} ({type(e).__name__}): install "
             "EGL (Debian: apt-get install libegl1 libgl1-mesa-dri), or OSMesa (libosmesa6) and set MUJOCO_GL=osmesa.")
    return renderer


def software_gl_warning(renderer: str, device) -> str | None:
    """On a GPU run, a software OpenGL renderer draws every frame on the CPU, often slower than CLIP runs."""
    software = ("llvmpipe", "softpipe", "swrast", "offscreen")  # Mesa's software renderers (OSMesa's included)
    if torch.device(device).type == "cuda" and any(name in renderer.lower() for name in software):
        return (f"warning: MuJoCo draws on the CPU ({renderer}) on a GPU run: install the NVIDIA driver's EGL library "
                "(Debian/Ubuntu: libnvidia-gl-<driver version>; in a container, NVIDIA_DRIVER_CAPABILITIES=all) and "
                "keep MUJOCO_GL=egl, so that frames are drawn on the GPU.")
    return None


def require_configured_camera(camera: str):
    """Stop with one sentence unless frames come from the free camera the scene configures: gymnasium names no
    camera, and uses a free camera with `default_camera_config` only since version 1.4 (before, the model's
    tracking camera, and a run would train on other pictures than the paper's)."""
    env = CLIPHumanoidEnv((16, 16), textured=False, camera=camera, fast_render=True)  # the camera is all it checks
    env.render()
    renderer, expected = env.mujoco_renderer, PAPER_CAMERA if camera == "paper" else DEFAULT_CAMERA_CONFIG
    cam = renderer.viewer.cam
    if renderer.camera_id != -1 or cam.type != mujoco.mjtCamera.mjCAMERA_FREE or not all(
            np.allclose(getattr(cam, key), value) for key, value in expected.items()):
        fail(f"the renderer does not use the --camera {camera} view (camera id {renderer.camera_id}, "
             f"{mujoco.mjtCamera(cam.type).name}): "
             f"install the gymnasium of requirements.txt (here: {gym.__version__}).")
    env.close()


# ---------------------------------------------------------------------------------------------
# Reference: the reward landscape's frames, greedy evaluation, the action baselines
# ---------------------------------------------------------------------------------------------
def set_pose(env: CLIPHumanoidEnv, joints: dict, pitch: float = 0.0):
    """Put the robot at rest in a pose (the reward landscape, tests): joint angles in degrees on the start pose,
    clipped into each joint's range (the start pose's straight knee, 0°, is past the knee's -2° limit), the trunk
    pitched by `pitch` degrees, and lowered until its lowest point touches the floor."""
    qpos = env.init_qpos.copy()
    qpos[3:7] = np.cos(np.radians(pitch) / 2), 0.0, np.sin(np.radians(pitch) / 2), 0.0  # about the y axis
    for name, degrees in joints.items():
        joint = env.model.joint(name)
        qpos[joint.qposadr[0]] = np.clip(np.radians(degrees), *joint.range)
    env.set_state(qpos, np.zeros(env.model.nv))
    qpos[2] -= lowest_point(env.model, env.data)
    env.set_state(qpos, np.zeros(env.model.nv))


def lowest_point(model, data) -> float:
    """Height of the lowest point of the robot's surface (its spheres and capsules)."""
    robot = model.geom_bodyid > 0  # body 0 is the world (the floor)
    radius, half_length = model.geom_size[robot, 0], model.geom_size[robot, 1]
    # A capsule's end reaches below its centre by its half-length times the vertical part of its axis.
    capsule = model.geom_type[robot] == mujoco.mjtGeom.mjGEOM_CAPSULE
    reach = np.where(capsule, np.abs(data.geom_xmat[robot, 8]) * half_length, 0.0)
    return float((data.geom_xpos[robot, 2] - reach - radius).min())


def path_pose(task: str, f: float):
    """(joint angles, pitch) a fraction f of the way from the task's start to its pose."""
    start, goal = TASKS[task].start, TASKS[task].pose
    return {j: (1 - f) * start.get(j, 0.0) + f * goal.get(j, 0.0) for j in {**start, **goal}}, f * TASKS[task].pitch


def landscape_frames(task: str, frame_size, textured: bool, camera: str, points: int, fast_render: bool = False):
    """Frames of the robot at rest along a path of poses: the joint angles go in `points` even steps from
    the task's start (standing, for most) to its hand-built pose. Returns (fractions of the path, frames,
    in-pose flags of the detector)."""
    env = CLIPHumanoidEnv(frame_size, textured, camera, fast_render=fast_render)
    fractions, frames, flags = np.linspace(0.0, 1.0, points), [], []
    for f in fractions:
        set_pose(env, *path_pose(task, f))
        frames.append(env.render())
        flags.append(in_pose(pose_features(env.data), task))
    env.close()
    return fractions, np.stack(frames), np.array(flags)


def evaluate(actor, reward_model, args, device, episodes: int, seed: int) -> list:
    """Deterministic episodes (the mean action): per episode its returns, frames (every episode's where CLIP
    scores them, else the first's, for its image strip) and CLIP rewards, and, where the task's detector judges
    the run (CLIP and pose runs), the in-pose flags, the fraction of steps in the pose and success."""
    judged = args.reward != "ground-truth"
    env = make_env(args.episode_length, reward_model.image_size if reward_model is not None else (224, 224),
                   args.textured, args.camera, terminate=not judged, task=args.task if judged else None,
                   fast_render=args.fast_render)()
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        frames, in_pose_flags, true_return, done = [], [], 0.0, False
        while not done:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, device=device)[None], deterministic=True)[0][0].cpu().numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            true_return, done = true_return + reward, terminated or truncated
            in_pose_flags.append(info.get("in_pose", False))
            if reward_model is not None or episode == 0:  # CLIP scores every episode; a strip shows the first
                frames.append(env.render())
        clip_rewards = reward_model(np.stack(frames)).cpu().numpy() if reward_model is not None else None
        pose_fraction = float(np.mean(in_pose_flags)) if judged else np.nan
        results.append(dict(true_return=true_return, pose_fraction=pose_fraction,
                            success=float(pose_fraction >= SUCCESS_FRACTION) if judged else np.nan,
                            clip_return=float(clip_rewards.sum()) if clip_rewards is not None else np.nan,
                            last_frame_clip_reward=float(clip_rewards[-1]) if clip_rewards is not None else np.nan,
                            frames=frames, clip_rewards=clip_rewards, in_pose=in_pose_flags if judged else None))
    return results


def action_baselines(args) -> dict:
    """What the task's detector says of doing nothing (zero actions) and of uniform random actions, over
    --baseline-episodes episodes each from the env's start states: the fraction of steps in the pose and the success
    rate. Left without torques the robot collapses onto its heels and kneels for a while, so a learned pose
    counts only where the greedy policy beats both."""
    env = make_env(args.episode_length, task=args.task, fast_render=True)()  # nothing is rendered
    env.action_space.seed(args.seed)
    figures = {}
    for name, act in (("zero", lambda: np.zeros(env.action_space.shape, np.float32)), ("random", env.action_space.sample)):
        fractions = []
        for episode in range(args.baseline_episodes):
            env.reset(seed=args.seed + 20_000 + episode)  # start states apart from training's and evaluation's
            steps_in_pose, done = [], False
            while not done:
                _, reward, terminated, truncated, _ = env.step(act())
                steps_in_pose.append(reward)
                done = terminated or truncated
            fractions.append(np.mean(steps_in_pose))
        figures[f"{name}_actions_pose_fraction"] = float(np.mean(fractions))
        figures[f"{name}_actions_success_rate"] = float(np.mean(np.array(fractions) >= SUCCESS_FRACTION))
    env.close()
    return figures


def image_strip(frames, clip_rewards, in_pose=None, count: int = 8) -> np.ndarray:
    """`count` evenly spaced frames of an episode side by side, each with its step, CLIP reward and,
    with the task's detector, "in pose" where it says so."""
    from PIL import Image, ImageDraw

    tiles = []
    for t in np.linspace(0, len(frames) - 1, count).round().astype(int):
        tile = Image.fromarray(frames[t])
        text = f"t={t}" + (f" r={clip_rewards[t]:.3f}" if clip_rewards is not None else "")
        ImageDraw.Draw(tile).text((4, 4), text + (" in pose" if in_pose is not None and in_pose[t] else ""),
                                  fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1)


# ---------------------------------------------------------------------------------------------
# Reference: the realistic scene (generated textures, gymnasium's model rewritten)
# ---------------------------------------------------------------------------------------------
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


def humanoid_xml(textured: bool, frame_size, folder: str, fast_render: bool = False) -> str:
    """gymnasium's humanoid.xml with an offscreen buffer of the frame size and, with `textured`, dressed as in
    the paper. MuJoCo's visual defaults stay, as in the authors' model: the overhead light casts shadows and the
    offscreen buffer multisamples 4x; `fast_render` turns both off. Writes the model and its textures into `folder`."""
    from PIL import Image

    source = os.path.join(os.path.dirname(gym.envs.mujoco.__file__), "assets", "humanoid.xml")
    root = ET.parse(source).getroot()
    visual = root.find("visual")
    height, width = frame_size
    ET.SubElement(visual, "global", offwidth=str(max(width, 64)), offheight=str(max(height, 64)))
    if fast_render:  # shadows and multisampling cost most of a software-rendered frame (docs/faithfulness.md)
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
def scene_file(textured: bool, frame_size: tuple, fast_render: bool = False) -> str:
    """The scene's XML path, written once per process into a temporary folder removed at exit."""
    folder = tempfile.mkdtemp(prefix="vlmrm_humanoid_")
    atexit.register(shutil.rmtree, folder, True)
    return humanoid_xml(textured, frame_size, folder, fast_render)


# ---------------------------------------------------------------------------------------------
# Reference: the pose detectors of the paper's eight tasks (features, thresholds, hand-built poses)
# ---------------------------------------------------------------------------------------------
# The paper's success measure was a person watching videos: "in the goal pose for at least half of
# the episode". Here a few geometric features of the robot's body stand in for the person's eyes.
# Heights are in metres above the floor (z = 0); the robot faces +x. For scale, standing upright
# with its feet on the floor: head 1.48, pelvis 0.87, knees 0.42, feet (sphere centres) 0.075;
# an episode starts 0.1 m higher, with the feet in the air, and the robot drops onto them.
# The thresholds were set on poses built by hand and checked by eye, and on random-action rollouts:
# benchmarks/pose_contact_sheet.py shows what each detector accepts and its nearest misses, and
# tests/test_pose.py checks the hand-built poses.
SUCCESS_FRACTION = 0.5  # the paper's criterion: in the pose for at least half of the episode's steps


INSIDE = 0.25  # the graded part is full only this many margins inside each threshold: it pulls on past the detector's boundary


def condition_depth(features: dict, condition) -> float:
    """How far a feature is inside its threshold (negative when the condition fails, by that much)."""
    feature, op, threshold, _ = condition
    return features[feature] - threshold if op == ">" else threshold - features[feature]


def in_pose(features: dict, task: str) -> bool:
    """The detector: every condition of the task holds."""
    return all(condition_depth(features, c) >= 0.0 for c in TASKS[task].conditions)


def pose_score(features: dict, task: str) -> float:
    """`--reward pose`: half the detector's in-pose flag, half a graded part in [0, 1].

    The graded part is the mean over the task's conditions of clip((depth + margin) / ((1 + INSIDE) margin), 0, 1):
    0 one margin outside a threshold, 0.8 at it, 1 a quarter margin inside. Far from the pose it says "closer";
    at the boundary it still pays to go further in, so the body does not hover where the flag flickers. The flag
    makes every step in the pose worth more than any step out of it: 0.9-1 in the pose, below 0.5 out of it.
    """
    conditions = TASKS[task].conditions
    shares = [min(max((condition_depth(features, c) + c[3]) / ((1 + INSIDE) * c[3]), 0.0), 1.0) for c in conditions]
    return 0.5 * sum(shares) / len(shares) + 0.5 * in_pose(features, task)


HIP_HALF_WIDTH = 0.16  # the outer side of the hips, from the pelvis's centre (its capsule: half-length 0.07 + radius 0.09)


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
    facing = facing / math.hypot(*facing[:2]) if math.hypot(*facing[:2]) > 0.1 else np.zeros(3)
    lower_knee = int(knees[1][2] < knees[0][2])  # 0: the right knee, 1: the left
    # How far each hand is to the robot's left of the spine, in the torso's frame (turning or leaning does not change it).
    leftward = {side: float((hand - torso_position) @ torso_axes[:, 1]) for side, hand in hands.items()}
    horizontal = lambda a, b: math.hypot(a[0] - b[0], a[1] - b[1])  # noqa: E731
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
        hands_to_hips=max(math.dist(hands[side], hips[side]) for side in hands),  # the farther hand
        # Positive when each hand is past the spine on the other side (the right hand on the left, and the left
        # hand on the right): the smaller of the two crossings, so both arms must cross.
        hands_crossed=min(leftward["right"], -leftward["left"]),
    )


# Each condition: (feature, "<" or ">", threshold, margin). The margin is the scale of the graded score
# (pose_score): one margin beyond the threshold is about the value of a clearly wrong pose, where the
# condition's share of the score reaches 0, so that the score still says "closer" up to there.
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


# ---------------------------------------------------------------------------------------------
# Plumbing, kept below the method: flag checks, loading CLIP, logging, results and figures
# ---------------------------------------------------------------------------------------------
# ==== BEGIN SHARED BLOCK: plumbing (identical in every script; tests/test_shared_blocks.py) ====
def fail(message: str):
    """Stop with one sentence on stderr and exit code 1, no traceback (bad flags, missing weights)."""
    raise SystemExit(f"error: {message}")


def check_flags(args, ranges: dict):
    """Before anything is loaded: stop with one sentence naming the flag if a numeric flag is outside its
    interval (e.g. "[0, 1]"), a prompt is empty, or the replay buffer is too small."""
    for name, interval in ranges.items():
        low, high, value = *(float(bound) for bound in interval[1:-1].split(",")), getattr(args, name)
        if not (low <= value if interval[0] == "[" else low < value) or not (
                value <= high if interval[-1] == "]" else value < high):
            fail(f"--{name.replace('_', '-')} must be in {interval}, got {value}.")
    for flag, prompts in (("--prompt", args.prompt), ("--baseline-prompt", args.baseline_prompt)):
        if not prompts or any(not p.strip() for p in prompts):
            fail(f"{flag} needs one or more non-empty sentences, e.g. {flag} \"a humanoid robot kneeling\".")
    if args.alpha > 0 and sorted(args.prompt) == sorted(args.baseline_prompt):
        fail("--baseline-prompt must differ from --prompt when --alpha > 0: the projection needs a direction.")
    least = args.train_frequency + args.num_envs * args.episode_length  # episodes are read from their slots
    if args.buffer_size < least:
        fail(f"--buffer-size must hold a rollout and an episode of every env (train-frequency + num-envs x "
             f"episode-length = {least}), got {args.buffer_size}.")


def choose_precision(flag: str, device) -> str:
    """`auto`: fp16 autocast on a GPU, as the authors ran CLIP, and fp32 on a CPU (a rule, not a measurement)."""
    precision = flag if flag != "auto" else "fp16" if torch.device(device).type == "cuda" else "fp32"
    print(f"CLIP image encoder runs in {precision}" + (" (autocast)" if precision != "fp32" else "")
          + (f" (--clip-precision auto on {torch.device(device).type})" if flag == "auto" else ""))
    return precision


def choose_chunk_size(flag: int, device) -> int:
    """`0`: 256 frames per CLIP pass on a GPU (few large passes keep it busy; memory bounds them) and 32 on a CPU,
    where passes of 16-64 frames ran fastest and 256 up to 20% slower (benchmarks/clip_cpu_pipeline.py)."""
    size = flag or (256 if torch.device(device).type == "cuda" else 32)
    if not flag:
        print(f"CLIP scores {size} frames per pass (--clip-chunk-size 0 on {torch.device(device).type})")
    return size


def weights_host_reachable(cfg: dict, timeout: float = 3.0) -> bool:
    """Whether the host of a pretrained config's weights (the Hugging Face hub, or its URL's) accepts a connection
    within `timeout` seconds."""
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.get("hf_hub") else cfg.get("url", "")
    try:
        socket.create_connection((urllib.parse.urlparse(url).hostname, 443), timeout=timeout).close()
        return True
    except (OSError, TypeError):  # no route, no name, refused, timed out; TypeError: no host at all
        return False


def clip_architecture(args) -> str:
    """The open_clip architecture of --clip-model (a model config .json is registered under its file's name), with
    --clip-pretrained checked against it: a bad name stops here with one sentence, before anything is downloaded."""
    name = args.clip_model
    if name.endswith(".json"):  # an open_clip model config, known by its file name
        if not os.path.isfile(name):
            fail(f"--clip-model {name!r}: no such model config file.")
        open_clip.add_model_config(name)
        name = os.path.splitext(os.path.basename(name))[0]
    if name not in open_clip.list_models():
        fail(f"--clip-model {args.clip_model!r} is not an open_clip architecture; use a name from "
             "open_clip.list_models(), e.g. RN50, ViT-B-32, ViT-L-14, ViT-H-14 or ViT-bigG-14, or the path of an "
             "open_clip model config (.json).")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not os.path.isfile(args.clip_pretrained) and args.clip_pretrained not in tags:
        fail(f"--clip-pretrained {args.clip_pretrained!r} is neither an existing checkpoint file nor a pretrained "
             f"tag of {name} (its tags: {', '.join(tags) or 'none'}).")
    return name


def load_clip_reward(args, device) -> CLIPReward:
    """The reward model of the flags: an open_clip architecture (or model config .json) with the weights of a
    pretrained tag (downloaded once, then cached) or of a checkpoint file. Bad names stop before the download."""
    name, local = clip_architecture(args), os.path.isfile(args.clip_pretrained)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings are not for users
    try:  # download before building the model (ViT-bigG-14 takes 10 GB), so that only a download problem reads as one
        if not local:
            cfg = open_clip.get_pretrained_cfg(name, args.clip_pretrained)
            if not weights_host_reachable(cfg):  # offline: the local cache or nothing, at once (not after the hub
                import huggingface_hub.constants  # client's minute of retries); read by the client at each call

                huggingface_hub.constants.HF_HUB_OFFLINE = True
            open_clip.download_pretrained(cfg)
    except Exception as e:
        fail(f"could not download the {args.clip_pretrained!r} weights of {name} ({type(e).__name__}): "
             "run once where the network is reachable so that open_clip caches them, or pass --clip-pretrained "
             "with the path of a local checkpoint file.")
    try:
        model = open_clip.create_model(name, pretrained=args.clip_pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:
        fail(f"--clip-pretrained {args.clip_pretrained!r} could not be loaded into {name}: "
             f"{(str(e).strip() or type(e).__name__).splitlines()[0][:200]}")
    return CLIPReward(model.eval().requires_grad_(False), tokenizer, args.prompt, args.baseline_prompt, args.alpha,
                      device, choose_chunk_size(args.clip_chunk_size, device), choose_precision(args.clip_precision, device))


def reward_report_command(env: str, args, prompts, *scene: str) -> str:
    """The command of benchmarks/reward_report.py that checks this run's reward (its model, prompts and α) on ~2,000
    states whose ground truth is known, in minutes, before the hours of training."""
    return shlex.join(["python", "benchmarks/reward_report.py", "--env", env, *scene, "--clip-model", args.clip_model,
                       "--clip-pretrained", args.clip_pretrained, "--prompt", *prompts,
                       "--baseline-prompt", *args.baseline_prompt, "--alpha", str(args.alpha)])


def open_writer(run_dir: str, args, resume_step: int | None = None) -> SummaryWriter:
    """TensorBoard's writer for the run, with the flags as a table; a resumed run writes on from `resume_step`
    (TensorBoard drops what an interrupted run logged from there on, after its checkpoint). With --track,
    Weights & Biases mirrors it (imported only then)."""
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=vars(args), dir=run_dir,
                   name=os.path.basename(run_dir), id=os.path.basename(run_dir), resume="allow",
                   sync_tensorboard=True, save_code=True)
    writer = SummaryWriter(run_dir, purge_step=resume_step)
    table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return writer


def close_writer(writer, args):
    writer.close()
    if args.track:
        import wandb

        wandb.finish()


def seed_everything(seed: int, torch_deterministic: bool):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


class StopRequests(list):
    """`with StopRequests() as stop:` SIGTERM (what SLURM sends before a time limit or a preemption) and Ctrl-C
    ask the run to stop at the end of the rollout, after a checkpoint (`stop` is then true); a second Ctrl-C stops
    it at once. Leaving the block gives the signals back."""

    def __enter__(self):
        self.previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGTERM, signal.SIGINT)}
        return self

    def handle(self, signum, frame):
        if signum == signal.SIGINT and "SIGINT" in self:
            raise KeyboardInterrupt
        self.append(signal.Signals(signum).name)
        os.write(1, f"{self[-1]}: the run stops at the end of this rollout, after a checkpoint (Ctrl-C again: "
                    "now, without one)\n".encode())  # not print: the signal may arrive while print writes

    def __exit__(self, *exception):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def stop_after_checkpoint(stop, step: int, run_dir: str, writer, args):
    """SIGTERM or Ctrl-C asked the run to stop: say how to go on, and exit with the signal's code (143 or 130)."""
    print(f"stopped at step {step} ({stop[0]}); to go on: python {os.path.basename(__file__)} "
          f"--resume {run_dir}", flush=True)
    close_writer(writer, args)
    raise SystemExit(143 if stop[0] == "SIGTERM" else 130)


def random_and_env_state(envs, rb, with_buffer: bool) -> dict:
    """What a checkpoint holds besides the agent and the loop's counters: the random streams (Python, NumPy,
    torch and the run's GPU, each env's and the action space's), each env's simulation and time-limit count,
    and the filled part of the replay buffer (as tensors: torch saves them without a pickled copy)."""
    stored = rb.size if rb.full else rb.pos
    return dict(random=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state(rb.device) if rb.device.type == "cuda" else None,
                action_space=envs.action_space.np_random.bit_generator.state,
                envs=[(env.unwrapped.np_random.bit_generator.state, env.get_wrapper_attr("_elapsed_steps"),
                       env.unwrapped.snapshot()) for env in envs.envs],
                buffer={key: torch.from_numpy(value[:stored]) if isinstance(value, np.ndarray) else value
                        for key, value in vars(rb).items() if key != "device"} if with_buffer else None)


def restore_random_and_env_state(state: dict, envs, rb):
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and rb.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], rb.device)
    envs.action_space.np_random.bit_generator.state = state["action_space"]
    for env, (rng, elapsed_steps, snapshot) in zip(envs.envs, state["envs"]):
        env.unwrapped.np_random.bit_generator.state = rng
        env.set_wrapper_attr("_elapsed_steps", elapsed_steps)
        env.unwrapped.restore(snapshot)
    for key, value in (state["buffer"] or {}).items():  # the stored part of each array
        if isinstance(value, torch.Tensor):
            getattr(rb, key)[: len(value)] = value.numpy()
        else:
            setattr(rb, key, value)


def save_checkpoint(run_dir: str, state: dict, keep: int = 2) -> str:
    """`checkpoint_<step>.pt`, written atomically (to a temporary file, flushed to disk, then renamed: a crash
    mid-write never leaves a broken checkpoint); the newest `keep` are kept."""
    path = os.path.join(run_dir, f"checkpoint_{state['global_step']:012d}.pt")
    with open(path + ".tmp", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    for old in sorted(glob.glob(os.path.join(run_dir, "checkpoint_*.pt")))[:-keep]:
        os.remove(old)
    return path


def load_checkpoint(run_dir: str) -> dict:
    """The newest checkpoint of a run folder that can be read (a damaged one is skipped, with a note); the
    remains of a write that crashed are removed."""
    for stale in glob.glob(os.path.join(run_dir, "checkpoint_*.pt.tmp")):
        os.remove(stale)
    for path in sorted(glob.glob(os.path.join(run_dir, "checkpoint_*.pt")), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: no second copy
        except Exception as e:
            print(f"note: {path} cannot be read ({type(e).__name__}); the run goes back to the one before it.")
    fail(f"--resume {run_dir!r} holds no readable checkpoint (checkpoint_*.pt): start the run anew.")


def resumed_args(args_class, state: dict, resume: str):
    """The run's own flags, from its checkpoint. A checkpoint written before a flag existed cannot say what the run
    meant by it, and today's default could change the run half way (its episode ends, its frames): it stops, as
    does one with a flag the script does not know or the loop's position under other names than POSITION."""
    missing = sorted({field.name for field in fields(args_class)} - set(state["args"]) - {"resume"})
    if missing:
        fail(f"--resume {resume!r}: its checkpoint was written before --{missing[0].replace('_', '-')} existed, so "
             "going on could change what the run does half way: finish it with the code that wrote it, or start anew.")
    if unknown := sorted(set(state["args"]) - {field.name for field in fields(args_class)}):
        fail(f"--resume {resume!r}: its checkpoint has a flag this script does not know "
             f"(--{unknown[0].replace('_', '-')}): finish the run with the code that wrote it, or start anew.")
    if missing := [key for key in (*POSITION, "training_starts") if key not in state]:
        fail(f"--resume {resume!r}: its checkpoint was written by an older version of this script (it holds no "
             f"{missing[0]}): finish the run with the code that wrote it, or start anew.")
    return args_class(**{**state["args"], "resume": resume})


def duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 1440}d{minutes // 60 % 24:02d}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60:02d}m"


def progress(step: int, total: int, steps_per_second: float) -> str:
    """`step 16000/3000000 (0.5%), 412 steps/s, ETA 2h01m`: a plain line, as readable in a log file as in a terminal."""
    step = min(step, total)  # the last vector step may pass the total
    eta = duration((total - step) / steps_per_second) if steps_per_second > 0 else "-"
    return f"step {step}/{total} ({100 * step / total:.1f}%), {steps_per_second:.0f} steps/s, ETA {eta}"


def estimate_run_time(reward_model, frames, args):
    """Before training: how long CLIP alone takes to score the run's frames at the speed measured here, and
    where that is more than a week, what ViT-B-32 would take (timed here with random weights: the speed does
    not depend on them)."""
    def seconds_per_frame(model, sample=frames[:8]):
        model(sample[:1]).cpu()  # the first pass sets things up; it is not the speed
        start = time.perf_counter()
        model(sample).cpu()  # .cpu() waits for a GPU to finish
        return (time.perf_counter() - start) / len(sample)

    seconds = args.total_timesteps * seconds_per_frame(reward_model)
    device = reward_model.device.type
    print(f"estimate: CLIP alone needs {duration(seconds)} for {args.total_timesteps} steps here ({args.clip_model}, "
          f"{reward_model.precision} on {device}); the run takes longer")
    if seconds > 7 * 86400:
        # Building ViT-B-32 draws random numbers: fork_rng keeps the run's streams as they were.
        with torch.random.fork_rng(devices=[] if device == "cpu" else [torch.cuda.current_device()]):
            small = CLIPReward(open_clip.create_model("ViT-B-32", device=device).eval(),
                               open_clip.get_tokenizer("ViT-B-32"), args.prompt, args.baseline_prompt, args.alpha,
                               device, reward_model.chunk_size, reward_model.precision)
        instead = args.total_timesteps * seconds_per_frame(small)
        print(f"warning: at this speed the run cannot finish ({duration(seconds)} for CLIP alone); " + (
            f"ViT-B-32 (--clip-model ViT-B-32 --clip-pretrained laion2b_s34b_b79k) would need {duration(instead)} "
            f"on this {device}, or run on a GPU." if instead < seconds else "run on a GPU."))


def log_rollout(writer, rb: ReplayBuffer, finished: list, is_success, uses_clip: bool, step: int) -> list:
    """At the end of a rollout, once CLIP's rewards are in the buffer: log each episode that ended in it
    (`finished`: (step, replay slots) pairs) and, for CLIP runs, how well the learned reward agrees with the
    ground truth. `is_success(ground-truth return, length)` says what success means (None: no criterion);
    returns the episodes' successes."""
    successes = []
    for end, slots in finished:
        true_return = float(rb.true_rewards[slots].sum())
        writer.add_scalar("charts/episodic_return", true_return, end)
        if is_success is not None:
            successes.append(float(is_success(true_return, len(slots))))
            writer.add_scalar("charts/success_rate", successes[-1], end)
        if uses_clip:
            writer.add_scalar("charts/episodic_clip_return", rb.rewards[slots].sum(), end)
            writer.add_scalar("charts/last_frame_clip_reward", rb.rewards[slots[-1]], end)
    correlation, epic = reward_agreement(rb) if uses_clip else (np.nan, np.nan)
    if np.isfinite(epic):
        writer.add_scalar("charts/reward_correlation", correlation, step)
        writer.add_scalar("charts/epic_distance", epic, step)
    return successes


def reward_agreement(rb: ReplayBuffer, window: int = 10_000) -> tuple[float, float]:
    """(ρ, sqrt((1 - ρ) / 2)): the correlation of the learned reward with the ground truth over the latest
    transitions, and the paper's EPIC distance (rewards of the reached state, over the visited states, ρ Pearson's:
    0 is an affine function of the ground truth, 0.71 uncorrelated, 1 reversed). NaN while either reward is constant."""
    recent = (rb.pos - 1 - np.arange(min(window, rb.size if rb.full else rb.pos))) % rb.size
    rewards, truth = rb.rewards[recent], rb.true_rewards[recent]
    if len(recent) < 2 or rewards.std() == 0 or truth.std() == 0:
        return float("nan"), float("nan")
    correlation = float(np.corrcoef(rewards, truth)[0, 1])
    return correlation, float(np.sqrt((1 - correlation) / 2))


def write_results(run_dir: str, args, final: dict, model_state: dict):
    """`results.json`: the flags, the final figures and the code's git commit (run_all.sh's summary reads it);
    with --save-model, the networks' weights."""
    if args.save_model:
        final["model_path"] = os.path.join(run_dir, f"{args.exp_name}.cleanrl_model")
        torch.save(model_state, final["model_path"])
        print(f"model saved to {final['model_path']}")
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on this machine
        commit = ""
    figures = {key: value for key, value in final.items() if value is None or isinstance(value, (int, float, str))}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"script": os.path.basename(__file__), "args": vars(args), "results": figures,
                   "git_commit": commit or "unknown"}, f, indent=1, default=str)


def plot_reward_landscape(xs, rewards, in_goal, xlabel: str, goal_label: str, title: str, path: str):
    """The paper's figure 2: the CLIP reward along a path of states, the ground truth's goal region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if in_goal.any():
        ax.axvspan(xs[in_goal].min(), xs[in_goal].max(), color="tab:green", alpha=0.15, label=goal_label)
    ax.plot(xs, rewards, marker=".", color="tab:blue", label="CLIP reward")
    ax.set(xlabel=xlabel, ylabel="CLIP reward")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def save_video(frames, clip_rewards, path: str, track: bool = False):
    """An animated GIF of the frames, each with its CLIP reward written on it (sent to W&B with --track)."""
    from PIL import Image, ImageDraw

    images = [Image.fromarray(f).resize((f.shape[1] * 2, f.shape[0] * 2), Image.NEAREST) for f in frames]
    for t, image in enumerate(images):
        text = f"t={t:3d}" + (f"  CLIP reward {clip_rewards[t]:.4f}" if clip_rewards is not None else "")
        ImageDraw.Draw(image).text((6, 6), text, fill=(0, 0, 0))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    if track:
        import wandb

        wandb.log({"videos/eval": wandb.Video(path)})
# ==== END SHARED BLOCK: plumbing ====


if __name__ == "__main__":
    main(tyro.cli(Args))
