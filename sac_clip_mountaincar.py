"""SAC on a realistic-looking MountainCar with a CLIP reward model (VLM-RM).

Reproduces the MountainCar experiment of "Vision-Language Models are Zero-Shot Reward Models for
Reinforcement Learning" (Rocamonde et al., ICLR 2024): the agent never sees MountainCar's reward.
Each state it reaches is drawn as a picture (sky, a textured mountain, a yellow flag on the right
peak, a red car on the slope), embedded by CLIP and compared with the embedding of a sentence
("a car at the peak of the mountain, next to the yellow flag"), sharpened by a baseline sentence
("a car in the mountain") through goal-baseline projection with weight alpha. With gymnasium's
flat drawing CLIP cannot tell where the car is and the task fails (`--no-textured` reproduces that).

    python sac_clip_mountaincar.py --alpha 0.5
    python sac_clip_mountaincar.py --clip-model ViT-B-32 --clip-pretrained /path/to/checkpoint.pt
    python sac_clip_mountaincar.py --reward ground-truth      # the RL half alone, no CLIP

Where each part is: the arguments, `Args`; the environment, `CLIPMountainCarEnv` (the paper's changes, drawn as a
picture-like scene); the reward, `CLIPReward`; the update, `SoftActorCritic.update` (with generalized state-dependent
exploration); the loop, `main`. Below `main`, for reference: the run's bookkeeping (start-up, the reward landscape,
resume, logging, final results); the landscape's frames, evaluation and the scene's drawing; the plumbing.
"""

import glob
import json
import logging
import math
import os
import random
import shlex
import signal
import socket
import subprocess
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, fields
from typing import Literal

import gymnasium as gym
import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from torch.utils.tensorboard import SummaryWriter


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
    """folder that receives `<run name>/` with TensorBoard logs, figures, videos and the model"""
    capture_video: bool = False
    """if toggled, a deterministic evaluation episode is saved as a GIF with the CLIP reward drawn on it"""
    video_interval: int = 100_000
    """transitions between two evaluation videos (with `--capture-video`)"""
    save_model: bool = False
    """if toggled, the actor and critic weights are saved to `<run>/<exp name>.cleanrl_model`"""
    checkpoint_interval: int = 200_000
    """transitions between two checkpoints (`<run>/checkpoint_<step>.pt`, also one at the end; the newest two are kept)"""
    checkpoint_buffer: bool = True
    """if toggled, checkpoints hold the replay buffer (1.6 MB at the default size); `--no-checkpoint-buffer`: a resumed run fills a fresh one for learning-starts transitions before it trains again"""
    resume: str | None = None
    """a run folder: go on from its newest readable checkpoint, with the run's own flags (others given are ignored)"""
    track: bool = False
    """if toggled, the run also goes to Weights & Biases (TensorBoard synced, flags, videos)"""
    wandb_project_name: str = "vlmrm"
    """the W&B project (with `--track`)"""
    wandb_entity: str | None = None
    """the W&B entity (team) of the project (with `--track`)"""

    # Reward
    reward: Literal["clip", "ground-truth"] = "clip"
    """`clip`: the CLIP reward; `ground-truth`: 1 while the car is at the flag, else 0 (no CLIP model is loaded)"""
    prompt: tuple[str, ...] = ("a car at the peak of the mountain, next to the yellow flag",)
    """goal prompt(s); several are averaged into one goal embedding"""
    baseline_prompt: tuple[str, ...] = ("a car in the mountain",)
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
    landscape_points: int = 41
    """car positions in the reward-landscape sweep made before training"""

    # Environment
    textured: bool = True
    """if toggled, the picture-like scene the paper needed; `--no-textured`: gymnasium's flat drawing (ablation)"""
    num_envs: int = 1
    """the number of parallel environments"""
    episode_length: int = 200
    """steps per episode; episodes end only by this time limit"""
    bootstrap_time_limit: bool = False
    """if toggled, the time-limit end is a truncation, bootstrapped (the textbook target for a time-unaware agent); default: terminal, as the paper's runs stored it (Q-values then sum about one episode of rewards)"""

    # SAC: the paper's MountainCar run (App. C), i.e. RL-zoo's MountainCarContinuous settings run through
    # SB3 with 1 env: 32 gradient steps every 32 steps, one update per transition. Every step count here
    # is in transitions (summed over envs), so the updates per transition stay the same for any --num-envs.
    total_timesteps: int = 3_000_000
    """total environment steps (transitions, summed over all envs)"""
    buffer_size: int = 50_000
    """the replay memory buffer size"""
    gamma: float = 0.9999
    """the discount factor gamma"""
    tau: float = 0.01
    """target smoothing coefficient (Polyak update of the target critics after every gradient step)"""
    batch_size: int = 512
    """the batch size of samples from the replay memory"""
    learning_starts: int = 100
    """transitions collected before learning starts (random actions until then)"""
    learning_rate: float = 3e-4
    """the learning rate of the actor, critics and entropy coefficient (the paper says 1e-4, its code ran 3e-4)"""
    train_frequency: int = 32
    """transitions (summed over envs) between two training phases"""
    gradient_steps: int = 32
    """gradient steps per training phase: gradient-steps / train-frequency updates per transition (paper: 1)"""
    hidden_size: int = 64
    """width of the two hidden layers of the actor and of each critic"""
    ent_coef: float = 0.1
    """the entropy coefficient (fixed unless `--autotune`)"""
    autotune: bool = False
    """if toggled, the entropy coefficient is tuned towards a target entropy of -action_dim"""
    sde: bool = True
    """if toggled, gSDE: exploration noise that is a function of the state, redrawn every `sde-sample-freq` steps; `--no-sde`: new Gaussian noise every step"""
    sde_sample_freq: int = 32
    """steps of each env between two draws of the exploration matrices (with `--sde`; SB3's meaning: vector steps), and a draw at the start of every rollout (as SB3)"""
    log_std_init: float = -3.67
    """initial log standard deviation of the exploration weights (with `--sde`; RL-zoo's value)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes at the end of training (0: no final evaluation)"""


# ---------------------------------------------------------------------------------------------
# Environment: MountainCar as the paper set it up, drawn so that CLIP can see where the car is (the drawing is
# below main: draw_scene with its texture noise, draw_car, and to_pixels, the scene's geometry)
# ---------------------------------------------------------------------------------------------
class CLIPMountainCarEnv(Continuous_MountainCarEnv):
    """gymnasium's MountainCarContinuous with the paper's changes, rendered at CLIP's input size.

    - No termination: episodes end only by the time limit.
    - The goal is absorbing: once the car reaches x ≥ 0.45 it stays there, at rest, next to the flag.
    - The environment's reward is the ground-truth signal, 1 while the car is at the flag, else 0;
      `info["at_goal"]` carries it too. The flag is reset with every episode (the authors' code
      kept it set from the first success on).
    - `textured=True` draws the scene the paper needed for CLIP: sky, distant hills, a rocky
      mountain with grass following the track, a yellow flag on the right peak and a red car
      tilted with the slope. The static scene is drawn once; each frame only adds the car.
      `textured=False` is gymnasium's own drawing, resized to the frame size.
    """

    def __init__(self, frame_size=(224, 224), textured: bool = True):
        super().__init__(render_mode="rgb_array")
        self.frame_size, self.textured = frame_size, textured  # (height, width) of rendered frames
        self.at_goal = False
        self._scene = None  # the static part of the textured frame, drawn on first use

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.at_goal = False
        return obs, {**info, "at_goal": False}

    def step(self, action):
        if not self.at_goal:
            super().step(action)
            self.at_goal = bool(self.state[0] >= self.goal_position)
        if self.at_goal:  # absorbing: the car stays where it reached the flag, at rest
            self.state = np.array([self.state[0], 0.0], dtype=np.float32)
        return np.array(self.state, dtype=np.float32), float(self.at_goal), False, False, {"at_goal": self.at_goal}

    def snapshot(self):  # the simulation state, for checkpoints
        return self.state.copy(), self.at_goal

    def restore(self, snapshot):
        self.state, self.at_goal = snapshot[0].copy(), snapshot[1]

    def set_state(self, position: float, velocity: float = 0.0):
        """Place the car (for the reward landscape and tests)."""
        self.state = np.array([position, velocity], dtype=np.float32)
        self.at_goal = bool(position >= self.goal_position)

    def render(self):
        if not self.textured:  # gymnasium's drawing, resized
            from PIL import Image

            return np.asarray(Image.fromarray(super().render()).resize(self.frame_size[::-1], Image.BICUBIC))
        import pygame

        if self._scene is None:  # the static part, drawn once
            self._scene = pygame.surfarray.make_surface(draw_scene(self).transpose(1, 0, 2))  # sky, hills, the flag
        return draw_car(self, self._scene.copy())  # the car, tilted with the slope


def make_env(episode_length: int, frame_size=(224, 224), textured: bool = True):
    return lambda: gym.wrappers.TimeLimit(CLIPMountainCarEnv(frame_size, textured), max_episode_steps=episode_length)


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
    flags, device, reward_model = start_up(args, reward_model)  # flag checks, seeds, the device, CLIP
    uses_clip = reward_model is not None
    frame_size = reward_model.image_size if uses_clip else (224, 224)
    run_dir, writer = open_run(args, state, reward_model)  # and, starting a CLIP run, its reward landscape

    # Autoreset off: every step is a real transition whose next_obs and frame are the state reached, also at
    # the end of an episode; finished envs are reset by hand. (The authors' code rendered after the vector
    # env had auto-reset, and scored the next episode's first frame instead.)
    envs = gym.vector.SyncVectorEnv([make_env(args.episode_length, frame_size, args.textured)
                                     for _ in range(args.num_envs)], autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    observation_space, action_space = envs.single_observation_space, envs.single_action_space
    agent = SoftActorCritic(observation_space, action_space, args, device)
    actor = agent.actor  # acts in the envs; agent.update trains it
    rb = ReplayBuffer(args.buffer_size, observation_space.shape[0], action_space.shape, np.float32, device)
    is_success = lambda true_return, length: true_return > 0  # noqa: E731  (the car reached the flag)

    # The loop's position: transitions collected, rollouts ended, gradient steps taken, the next video.
    global_step = rollouts_done = updates_done = next_video = 0
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    episode_slots, successes, losses = [[] for _ in range(args.num_envs)], deque(maxlen=10), {}
    training_starts = args.learning_starts  # a resume into a fresh buffer moves it (restore_run)
    if state:  # everything as it was at the checkpoint: the run goes on exactly as an uninterrupted one
        global_step, rollouts_done, updates_done, next_video = (state[key] for key in POSITION)
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
            next_obs, true_rewards, terminations, truncations, _ = envs.step(actions)
            # The reward is CLIP's: NaN in the buffer until the frame of the state reached has been scored.
            # The paper's envs set terminated=True at the time limit, so SB3 never bootstrapped from an episode's
            # last state; --bootstrap-time-limit stores the time limit as a truncation instead (bootstrapped).
            dones = terminations | truncations
            slots = rb.add(obs, next_obs, actions, np.nan if uses_clip else true_rewards, true_rewards,
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
                to_score, finished = [], []
                waiting = training_starts // args.train_frequency  # rollouts before the first training phase
                phases = max(rollouts_done - waiting, 0) - max(rollouts_before - waiting, 0)
                for _ in range(args.gradient_steps * phases):
                    losses = agent.update(*rb.sample(args.batch_size))
                if phases:
                    updates_done += args.gradient_steps * phases
                    log_training_phase(writer, args, global_step, losses, actor, successes,
                                       sps=int((global_step - start_step) / (time.time() - start_time)))

            if args.capture_video and global_step >= next_video:
                save_eval_video(actor, reward_model, args, device, run_dir, global_step)
                next_video += args.video_interval

            # Checkpoints at the end of a rollout (nothing waits for CLIP then): every checkpoint-interval
            # transitions, at the end, and when SIGTERM or Ctrl-C asked the run to stop.
            if rollout_ends and (stop or global_step // args.checkpoint_interval > checkpoints_done
                                 or global_step >= args.total_timesteps):
                checkpoints_done = global_step // args.checkpoint_interval
                save_checkpoint(run_dir, dict(
                    args=flags, seconds=elapsed(), global_step=global_step, rollouts_done=rollouts_done,
                    updates_done=updates_done, next_video=next_video, training_starts=training_starts,
                    agent=agent.checkpoint(), obs=obs, episode_slots=episode_slots, successes=list(successes),
                    losses=losses, **random_and_env_state(envs, rb, args.checkpoint_buffer)))
                if stop:
                    stop_after_checkpoint(stop, global_step, run_dir, writer, args)
    envs.close()
    sps = global_step / elapsed()  # training only: not the final evaluation
    return final_results(args, agent, reward_model, device, rb, writer, successes, elapsed, dict(
        **losses, global_step=global_step, gradient_steps_done=updates_done, run_dir=run_dir, sps=sps))


# ---------------------------------------------------------------------------------------------
# Run bookkeeping, below the method: start-up, checkpoints, logging, final results
# ---------------------------------------------------------------------------------------------
# Allowed values of the numeric flags, checked before anything is loaded.
RANGES = dict(alpha="[0, 1]", num_envs="[1, inf)", episode_length="[1, inf)", total_timesteps="[1, inf)",
              learning_rate="(0, inf)", buffer_size="[1, inf)", gamma="[0, 1]", tau="(0, 1]", batch_size="[1, inf)",
              learning_starts="[0, inf)", train_frequency="[1, inf)", gradient_steps="[1, inf)", hidden_size="[1, inf)",
              ent_coef="[0, inf)", sde_sample_freq="[1, inf)", log_std_init="(-inf, inf)", eval_episodes="[0, inf)",
              video_interval="[1, inf)", clip_chunk_size="[0, inf)", landscape_points="[2, inf)",
              checkpoint_interval="[1, inf)", torch_threads="[0, inf)")


def start_up(args, reward_model: CLIPReward | None) -> tuple:
    """Bad flags stop the run before anything loads, then every random stream is seeded and the device chosen; a
    CLIP run loads its reward model (unless a test gave one). Returns the flags to keep, the device and the model."""
    check_flags(args, RANGES)
    flags = dict(vars(args))  # for checkpoints: the flags as the run began
    seed_everything(args.seed, args.torch_deterministic)
    if args.torch_threads:  # else torch spins a thread on every core, and runs sharing a machine slow each other
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.reward == "clip" and reward_model is None:
        reward_model = load_clip_reward(args, device)
    return flags, device, reward_model


def open_run(args, state: dict | None, reward_model: CLIPReward | None) -> tuple[str, SummaryWriter]:
    """The run's folder (a resumed run's own) and TensorBoard writer; a new CLIP run first logs its reward landscape."""
    run_name = f"MountainCar__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.normpath(args.resume or os.path.join(args.output_dir, run_name))
    writer = open_writer(run_dir, args, resume_step=state["global_step"] + 1 if state else None)
    if reward_model is not None and not state:  # the reward landscape: is the car at the flag ranked above elsewhere?
        log_reward_landscape(reward_model, args, writer, run_dir)
    return run_dir, writer


def log_reward_landscape(reward_model: CLIPReward, args, writer, run_dir: str):
    """Before training, whether the prompt can work at all (the paper's figure 2), and how long CLIP will take."""
    positions = np.linspace(-1.2, 0.6, args.landscape_points)
    frames, at_goal = landscape_frames(reward_model.image_size, positions, args.textured)
    rewards = reward_model(frames).cpu().numpy()
    writer.add_figure("reward_landscape", plot_reward_landscape(
        positions, rewards, at_goal, "car position x", "at the flag (ground truth)",
        f"{args.prompt[0]!r}, alpha={args.alpha}, textured={args.textured}",
        os.path.join(run_dir, "reward_landscape.png")))
    gap = rewards[at_goal].mean() - rewards[~at_goal].mean()
    writer.add_scalar("landscape/goal_minus_elsewhere", gap, 0)
    print(f"reward landscape: mean CLIP reward at the flag - elsewhere = {gap:.4g} (positive: the prompt can work); "
          "on a grid of labelled states, with other prompts and alphas: " + reward_report_command(
              "mountaincar", args, args.prompt, *[] if args.textured else ["--no-textured"]))
    estimate_run_time(reward_model, frames, args)


# The loop's position in a checkpoint (main reads it back under these names).
POSITION = ("global_step", "rollouts_done", "updates_done", "next_video")


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


def log_training_phase(writer, args, step: int, losses: dict, actor, successes, sps: int):
    """After each training phase, its losses in TensorBoard and, every 1,000 steps, a progress line for the log."""
    for name, value in losses.items():
        writer.add_scalar(f"losses/{name}", value, step)
    writer.add_scalar("charts/SPS", sps, step)
    if args.sde:
        writer.add_scalar("charts/sde_sigma", actor.log_std.exp().mean().item(), step)
    if step % 1000 < args.train_frequency:
        recent = f"{np.mean(successes):.2f}" if successes else "-"
        print(f"{progress(step, args.total_timesteps, sps)}, td_loss {losses['td_loss']:.4g}, "
              f"q {losses['q_values']:.4g}, success (last 10 episodes) {recent}", flush=True)


def save_eval_video(actor, reward_model, args, device, run_dir: str, step: int):
    """With --capture-video: a deterministic episode as a GIF with CLIP's rewards on it, to see what the agent does."""
    episode = evaluate(actor, reward_model, args, device, 1, args.seed)[0]
    save_video(episode["frames"], episode["clip_rewards"], os.path.join(run_dir, "videos", f"eval_step{step}.gif"),
               args.track)


def final_results(args, agent, reward_model, device, rb, writer, successes, elapsed, training: dict) -> dict:
    """After training, how good the deterministic policy is: the final figures, logged, printed, in results.json."""
    uses_clip = reward_model is not None
    results = evaluate(agent.actor, reward_model, args, device, args.eval_episodes, args.seed + 10_000)
    mean = lambda key: float(np.mean([r[key] for r in results])) if results else float("nan")  # noqa: E731
    final = dict(eval_success_rate=mean("success"), eval_episodic_return=mean("true_return"),
                 eval_clip_return=mean("clip_return"),
                 train_success_rate_last10=np.mean(successes) if successes else np.nan, **training,
                 wall_seconds=elapsed(), epic_distance=reward_agreement(rb)[1] if uses_clip else np.nan,
                 precision=reward_model.precision if uses_clip else None)
    for key in ("success_rate", "episodic_return", "clip_return") if results else ():
        if key != "clip_return" or uses_clip:
            writer.add_scalar(f"eval/{key}", final[f"eval_{key}"], training["global_step"])
    print(f"eval: success rate {final['eval_success_rate']:.2f}, return {final['eval_episodic_return']:.1f}, "
          f"CLIP return {final['eval_clip_return']:.4g}")
    write_results(training["run_dir"], args, final, agent.state_dict())
    close_writer(writer, args)
    return final


# ---------------------------------------------------------------------------------------------
# Reference: the reward landscape's frames (the paper's figure 2) and the deterministic evaluation
# ---------------------------------------------------------------------------------------------
def landscape_frames(frame_size, positions, textured: bool):
    """Frames of the car at rest at each position along the track, and which are at the flag."""
    env, frames, at_goal = CLIPMountainCarEnv(frame_size, textured), [], []
    for position in positions:
        env.set_state(float(position))
        frames.append(env.render())
        at_goal.append(env.at_goal)
    return np.stack(frames), np.array(at_goal)


def evaluate(actor, reward_model, args, device, episodes: int, seed: int) -> list:
    """Deterministic episodes (the mean action): per episode its success, returns, and frames and CLIP rewards."""
    env = make_env(args.episode_length, reward_model.image_size if reward_model is not None else (224, 224),
                   args.textured)()
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        frames, true_return, done = [], 0.0, False
        while not done:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, device=device)[None], deterministic=True)[0][0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            true_return, done = true_return + reward, terminated or truncated
            if reward_model is not None or args.capture_video:
                frames.append(env.render())
        clip_rewards = reward_model(np.stack(frames)).cpu().numpy() if reward_model is not None else None
        results.append(dict(success=float(true_return > 0), true_return=true_return,
                            clip_return=float(clip_rewards.sum()) if clip_rewards is not None else np.nan,
                            frames=frames, clip_rewards=clip_rewards))
    return results


# ---------------------------------------------------------------------------------------------
# Reference: the realistic scene: its static part (sky, hills, the textured mountain, the flag), and the car
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


def to_pixels(env, x, y):
    """Geometry of gymnasium's 600x400 scene (y up from the bottom, 333 px per unit), stretched to the frame like
    the resize the authors applied, so the two renderers agree on where things are."""
    height, width = env.frame_size
    scale = 600 / (env.max_position - env.min_position)
    return (np.asarray(x) - env.min_position) * scale * width / 600, (400 - np.asarray(y) * scale) * height / 400


def draw_scene(env) -> np.ndarray:
    """The static part of the textured frame of `env` (a CLIPMountainCarEnv), (H, W, 3) uint8: sky, hills, the textured
    mountain, the flag."""
    height, width = env.frame_size
    rng = np.random.default_rng(0)  # the same picture every time
    rows = np.arange(height)[:, None] / height
    sky = np.array([70, 130, 205]) * (1 - rows[..., None]) + np.array([200, 225, 245]) * rows[..., None]
    image = np.broadcast_to(sky, (height, width, 3)).copy()

    columns = np.arange(width) + 0.5
    world_x = env.min_position + columns / width * (env.max_position - env.min_position)
    _, surface_row = to_pixels(env, world_x, env._height(world_x))
    hills_row = height * (0.42 + 0.06 * np.sin(world_x * 4.0 + 1.0) + 0.03 * np.sin(world_x * 11.0))
    depth = np.arange(height)[:, None] - surface_row[None, :]  # pixels below the track surface
    texture = value_noise(rng, height, width)
    hills = np.arange(height)[:, None] >= hills_row[None, :]
    image[hills] = (np.array([120, 150, 165]) * (0.85 + 0.3 * texture[..., None]))[hills]
    rock = np.array([115, 95, 75]) * (0.6 + 0.7 * texture[..., None])
    strata = 0.9 + 0.1 * np.sin(depth[..., None] * 0.9 + 6 * texture[..., None])
    grass = np.array([70, 140, 55]) * (0.75 + 0.5 * texture[..., None])
    ground = np.where((depth < 0.035 * height)[..., None], grass, rock * strata)
    image[depth >= 0] = ground[depth >= 0]

    # The flag: a dark pole rising from the track at the goal, a yellow cloth at its top.
    fx, fy = to_pixels(env, env.goal_position, env._height(env.goal_position))
    pole_top = fy - 0.13 * height
    fx, pole_width = int(round(fx)), max(1, width // 150)
    image[int(pole_top): int(fy), fx - pole_width // 2: fx + pole_width // 2 + 1] = (60, 60, 60)
    cloth_rows = np.arange(int(pole_top), int(pole_top + 0.06 * height))
    for r in cloth_rows:
        half = 1 - abs((r - pole_top) / (0.03 * height) - 1)  # triangle pointing right
        image[r, fx + 1: fx + 1 + int(0.09 * width * half)] = (245, 205, 20)
    return image.clip(0, 255).astype(np.uint8)


def draw_car(env, surf) -> np.ndarray:
    """The frame of `env` (a CLIPMountainCarEnv): the car, red and tilted with the slope, on the static scene `surf`."""
    import pygame
    from pygame import gfxdraw

    height, width = env.frame_size
    position = float(env.state[0])
    px, py = to_pixels(env, position, env._height(position))
    slope = 1.35 * math.cos(3 * position) * (height / 400) / (width / 600)  # pixel slope of the track
    angle = math.atan(slope)
    along, normal = np.array([math.cos(angle), -math.sin(angle)]), np.array([math.sin(angle), math.cos(angle)])
    unit = width / 600 * 1.6  # the car is 1.6x gymnasium's so that CLIP can see it at 224 px

    def place(points):  # car coordinates (right along the slope, up from the track) -> pixels
        return [tuple(np.array([px, py]) + unit * (u * along - v * normal)) for u, v in points]

    for u in (-11, 11):  # wheels
        (wx, wy), = place([(u, 6)])
        gfxdraw.filled_circle(surf, int(wx), int(wy), max(2, int(6 * unit)), (30, 30, 30))
    body = place([(-22, 5), (-22, 14), (22, 14), (22, 5)])
    cabin = place([(-12, 14), (-8, 22), (8, 22), (13, 14)])
    window = place([(-9, 15), (-6, 20), (6, 20), (9, 15)])
    for polygon, color in ((body, (200, 25, 30)), (cabin, (180, 20, 25)), (window, (170, 210, 235))):
        gfxdraw.aapolygon(surf, polygon, color)
        gfxdraw.filled_polygon(surf, polygon, color)
    return np.ascontiguousarray(pygame.surfarray.pixels3d(surf).transpose(1, 0, 2))


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
