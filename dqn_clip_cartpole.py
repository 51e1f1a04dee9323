"""DQN on CartPole with a CLIP reward model (VLM-RM).

Reproduces the CartPole experiment of "Vision-Language Models are Zero-Shot Reward Models for
Reinforcement Learning" (Rocamonde et al., ICLR 2024): the agent never sees CartPole's reward.
Each state it reaches is rendered, embedded by CLIP and compared with the embedding of a sentence
("pole vertically upright on top of the cart"), sharpened by a baseline sentence ("pole and cart")
through goal-baseline projection with weight alpha.

    python dqn_clip_cartpole.py --alpha 0.5
    python dqn_clip_cartpole.py --clip-model ViT-B-32 --clip-pretrained /path/to/checkpoint.pt
    python dqn_clip_cartpole.py --reward ground-truth      # the RL half alone, no CLIP

Read top to bottom: arguments, the environment (paper's changes + rendering at CLIP's input size),
the CLIP reward, the replay buffer and the queue that batches frames through CLIP, the Q-network,
the reward landscape and evaluation, then the training loop.
"""

import json
import logging
import os
import random
import subprocess
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
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
    """if toggled, CUDA is used when available (CLIP and the Q-network)"""
    output_dir: str = "runs"
    """folder that receives `<run name>/` with TensorBoard logs, figures, videos and the model"""
    capture_video: bool = False
    """if toggled, a greedy evaluation episode is saved as a GIF with the CLIP reward drawn on it"""
    video_interval: int = 100_000
    """transitions between two evaluation videos (with `--capture-video`)"""
    save_model: bool = False
    """if toggled, the Q-network weights are saved to `<run>/<exp name>.cleanrl_model`"""

    # Reward
    reward: Literal["clip", "ground-truth"] = "clip"
    """`clip`: the CLIP reward; `ground-truth`: 1 while the pole is upright, else 0 (no CLIP model is loaded)"""
    prompt: tuple[str, ...] = ("pole vertically upright on top of the cart",)
    """goal prompt(s); several are averaged into one goal embedding"""
    baseline_prompt: tuple[str, ...] = ("pole and cart",)
    """baseline prompt(s) for goal-baseline projection; several are averaged"""
    alpha: float = 0.0
    """goal-baseline projection weight in [0, 1]: 0 = cosine similarity to the goal, 1 = only the goal-baseline direction counts"""
    clip_model: str = "ViT-bigG-14"
    """open_clip architecture name (e.g. RN50, ViT-B-32, ViT-L-14, ViT-H-14, ViT-bigG-14)"""
    clip_pretrained: str = "laion2b_s39b_b160k"
    """open_clip pretrained tag of `--clip-model`, or the path of a local checkpoint file"""
    clip_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """CLIP image-encoder precision (autocast for bf16/fp16); `auto`: fp16 on a GPU (the authors' autocast), fp32 on a CPU"""
    clip_batch_size: int = 400
    """frames queued before CLIP scores them together, in the background while the envs step (a training phase also scores whatever is queued)"""
    clip_chunk_size: int = 256
    """most frames per CLIP forward pass (bounds GPU memory: 256 frames of ViT-bigG-14 need ~3 GB of fp16 activations; README, "Speed")"""
    landscape_points: int = 41
    """pole angles in the reward-landscape sweep made before training"""

    # Environment
    num_envs: int = 8
    """the number of parallel environments (paper: 8 per GPU)"""
    episode_length: int = 200
    """steps per episode; episodes end only by this time limit (truncation, bootstrapped)"""

    # DQN: the paper's CartPole run, i.e. the authors' config run through SB3 with their config class's
    # defaults. SB3 counts train_freq and gradient_steps in vector steps of 8 envs; here every step count
    # is in transitions (summed over envs), so the updates per transition are the paper's for any --num-envs.
    total_timesteps: int = 3_000_000
    """total environment steps (transitions, summed over all envs)"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer (paper: 2.3e-3, which learned and then lost the task here; README)"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size (SB3's default)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """the target network update rate: target <- tau * online + (1 - tau) * target (1.0 = hard copy)"""
    target_network_frequency: int = 8
    """transitions between two target network updates (paper: after every vector step of 8 envs)"""
    batch_size: int = 64
    """the batch size of samples from the replay memory"""
    start_e: float = 1.0
    """the starting epsilon for exploration"""
    end_e: float = 0.05
    """the ending epsilon for exploration"""
    exploration_fraction: float = 0.1
    """the fraction of `total-timesteps` it takes from start-e to go end-e"""
    learning_starts: int = 75_000
    """transitions collected before learning starts"""
    train_frequency: int = 1600
    """transitions (summed over envs) between two training phases (paper: 200 vector steps of 8 envs)"""
    gradient_steps: int = 200
    """gradient steps per training phase: gradient-steps / train-frequency updates per transition (paper: 200 per 1600)"""
    max_grad_norm: float = 10.0
    """gradient-norm clipping of the Q-network update (as in SB3's DQN, which the paper used)"""
    hidden_size: int = 256
    """width of the two hidden layers of the Q-network"""
    eval_episodes: int = 10
    """greedy evaluation episodes at the end of training (0: no final evaluation)"""


# Allowed values of the numeric flags, checked before anything is loaded.
RANGES = dict(num_envs="[1, inf)", episode_length="[1, inf)", total_timesteps="[1, inf)", learning_rate="(0, inf)",
              buffer_size="[1, inf)", gamma="[0, 1]", tau="(0, 1]", target_network_frequency="[1, inf)",
              batch_size="[1, inf)", start_e="[0, 1]", end_e="[0, 1]", exploration_fraction="(0, 1]",
              learning_starts="[0, inf)", train_frequency="[1, inf)", gradient_steps="[1, inf)",
              max_grad_norm="(0, inf)", hidden_size="[1, inf)", eval_episodes="[0, inf)", video_interval="[1, inf)",
              clip_batch_size="[1, inf)", clip_chunk_size="[1, inf)", landscape_points="[2, inf)")


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
# Environment: CartPole as the paper set it up
# ---------------------------------------------------------------------------------------------
class CLIPCartPoleEnv(CartPoleEnv):
    """gymnasium's CartPole with the paper's changes, rendered at CLIP's input size.

    - No termination: the pole may fall and the episode goes on until the time limit.
    - The cart is kept on screen by walls at ±2.4 (the paper clipped its position). The walls are
      inelastic: they stop outward motion only, so the cart drives away when pushed away, and while
      a wall holds the cart the pole swings about a fixed pivot.
    - The pole angle is wrapped to [-π, π), so a pole that swings round stays describable.
    - The environment's reward is the ground-truth signal, 1 while "upright" (pole within ±12°),
      else 0; `info["upright"]` carries it too. The paper's "cart in bounds" holds by construction:
      the walls keep the cart within gymnasium's bounds test (out means |x| > 2.4), and a cart
      resting at the wall with its pole up is what the goal prompt describes. (Counting the wall as
      failure, a penalty that arrives ~100 steps after the drift that causes it, made DQN unstable.)
    """

    def __init__(self, frame_size=(224, 224), **kwargs):
        super().__init__(render_mode="rgb_array", **kwargs)
        self.frame_size = frame_size  # (height, width) of rendered frames
        # The stock renderer draws 600x400; we draw the same scene straight at CLIP's size,
        # stretched like the resize the authors applied, so no resize is needed afterwards.
        self.observation_space = gym.spaces.Box(
            np.array([-self.x_threshold, -np.inf, -np.pi, -np.inf], dtype=np.float32),
            np.array([self.x_threshold, np.inf, np.pi, np.inf], dtype=np.float32),
        )

    def step(self, action):
        # gymnasium's CartPole equations of motion (Euler integration), written out so that the wall
        # can act on them.
        x, x_dot, theta, theta_dot = self.state
        force = self.force_mag if action == 1 else -self.force_mag
        sin, cos = np.sin(theta), np.cos(theta)
        temp = (force + self.polemass_length * theta_dot**2 * sin) / self.total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * cos**2 / self.total_mass))
        x_acc = temp - self.polemass_length * theta_acc * cos / self.total_mass
        wall = np.sign(x) if abs(x) >= self.x_threshold else 0.0  # +1 / -1 while at the right / left wall
        if x_acc * wall > 0 and x_dot * wall >= 0:
            # At rest against the wall and pushed into it: the wall holds the cart, and the pole swings
            # about a fixed pivot (a uniform rod of half-length l: θ'' = 3 g sin θ / 4l). Pushed away,
            # or already moving away, the cart follows gymnasium's free equations.
            x_acc, theta_acc = 0.0, 3.0 * self.gravity * sin / (4.0 * self.length)
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * x_acc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * theta_acc
        if abs(x) > self.x_threshold:
            # The cart hits the wall (inelastic): it stops there, and the sudden stop of the pivot passes
            # to the pole (angular momentum about the pivot is conserved through the impact).
            x = float(np.clip(x, -self.x_threshold, self.x_threshold))
            if x_dot * np.sign(x) > 0:
                theta_dot += 3.0 * np.cos(theta) * x_dot / (4.0 * self.length)
                x_dot = 0.0
        theta = (theta + np.pi) % (2 * np.pi) - np.pi
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)
        upright = self.is_upright()
        return np.array(self.state, dtype=np.float32), float(upright), False, False, {"upright": upright}

    def is_upright(self) -> bool:
        x, _, theta, _ = self.state
        return bool(abs(theta) <= self.theta_threshold_radians and abs(x) <= self.x_threshold)

    def set_state(self, x=0.0, x_dot=0.0, theta=0.0, theta_dot=0.0):
        """Place the system in a given state (for the reward landscape and tests)."""
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)

    def render(self):
        import pygame
        from pygame import gfxdraw

        height, width = self.frame_size
        sx, sy = width / 600, height / 400  # stock-scene coordinates -> frame pixels
        scale = 600 / (2 * self.x_threshold)  # stock pixels per metre
        x, _, theta, _ = self.state
        cart_x, cart_y = x * scale + 300, 100  # stock coordinates, y up from the bottom
        axle_y = cart_y + 30 / 4
        pole_len, pole_w = scale * 2 * self.length, 10

        def to_frame(points):  # y up -> y down, then stretch to the frame
            return [(px * sx, (400 - py) * sy) for px, py in points]

        surf = pygame.Surface((width, height))
        surf.fill((255, 255, 255))
        gfxdraw.hline(surf, 0, width, int((400 - cart_y) * sy), (0, 0, 0))
        cart = to_frame([(cart_x + dx, cart_y + dy) for dx, dy in ((-25, -15), (-25, 15), (25, 15), (25, -15))])
        gfxdraw.aapolygon(surf, cart, (0, 0, 0))
        gfxdraw.filled_polygon(surf, cart, (0, 0, 0))
        c, s = np.cos(theta), np.sin(theta)  # theta > 0: the pole leans right
        corners = ((-pole_w / 2, -pole_w / 2), (-pole_w / 2, pole_len - pole_w / 2),
                   (pole_w / 2, pole_len - pole_w / 2), (pole_w / 2, -pole_w / 2))
        pole = to_frame([(cart_x + px * c + py * s, axle_y - px * s + py * c) for px, py in corners])
        gfxdraw.aapolygon(surf, pole, (202, 152, 101))
        gfxdraw.filled_polygon(surf, pole, (202, 152, 101))
        (ax, ay), = to_frame([(cart_x, axle_y)])
        rx, ry = max(1, int(pole_w / 2 * sx)), max(1, int(pole_w / 2 * sy))
        gfxdraw.aaellipse(surf, int(ax), int(ay), rx, ry, (129, 132, 203))
        gfxdraw.filled_ellipse(surf, int(ax), int(ay), rx, ry, (129, 132, 203))
        return np.ascontiguousarray(pygame.surfarray.pixels3d(surf).transpose(1, 0, 2))


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


def make_env(episode_length: int, frame_size=None):
    """A thunk for the vector env. `frame_size=None`: no frames are rendered (ground-truth reward)."""

    def thunk():
        env = CLIPCartPoleEnv(frame_size=frame_size or (224, 224))
        env = gym.wrappers.TimeLimit(env, max_episode_steps=episode_length)
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
# Q-network
# ---------------------------------------------------------------------------------------------
class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden_size: int = 256):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(obs_dim, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, n_actions),
        )

    def forward(self, x):
        return self.network(x)


def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def dqn_update(q_network, target_network, optimizer, batch, gamma: float, max_grad_norm: float) -> dict:
    """One gradient step: Huber loss (as SB3's DQN) between Q(s, a) and r + γ max_a' Q_target(s', a'),
    with no bootstrap from a terminal state (a truncated episode is not terminal: it is bootstrapped)."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        td_target = rewards + gamma * target_network(next_obs).max(dim=1).values * (1 - terminations)
    q_taken = q_network(obs).gather(1, actions[:, None]).squeeze(1)
    loss = F.smooth_l1_loss(q_taken, td_target)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(q_network.parameters(), max_grad_norm)
    optimizer.step()
    return dict(td_loss=loss.item(), q_values=q_taken.mean().item())


@torch.no_grad()
def polyak_update(network, target_network, tau: float):
    """target <- tau * online + (1 - tau) * target (tau = 1: a hard copy)."""
    for param, target_param in zip(network.parameters(), target_network.parameters()):
        target_param.lerp_(param, tau)


# ---------------------------------------------------------------------------------------------
# Reward landscape (the paper's figure 2) and greedy evaluation
# ---------------------------------------------------------------------------------------------
def landscape_frames(frame_size, angles):
    """Frames of the cart at the centre, at rest, with the pole at each angle."""
    env = CLIPCartPoleEnv(frame_size=frame_size)
    frames, upright = [], []
    for angle in angles:
        env.set_state(theta=float(angle))
        frames.append(env.render())
        upright.append(env.is_upright())
    env.close()
    return np.stack(frames), np.array(upright)


def evaluate(q_network, reward_model, args, device, episodes: int, frame_size, seed: int):
    """Greedy episodes (no exploration). Returns per-episode success, returns and the frames of the last."""
    env = make_env(args.episode_length, frame_size)()
    results = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        frames, true_return, done = [], 0.0, False
        while not done:
            with torch.no_grad():
                action = q_network(torch.as_tensor(obs, device=device)[None]).argmax(dim=1).item()
            obs, reward, terminated, truncated, info = env.step(action)
            true_return += reward
            if frame_size is not None:
                frames.append(info["frame"])
            done = terminated or truncated
        clip_rewards = reward_model(np.stack(frames)) if reward_model is not None else None
        results.append(dict(success=float(true_return == args.episode_length), true_return=true_return,
                            clip_return=float(clip_rewards.sum()) if clip_rewards is not None else np.nan,
                            frames=frames, clip_rewards=clip_rewards))
    env.close()
    return results


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
# Training
# ---------------------------------------------------------------------------------------------
def main(args: Args, reward_model: CLIPReward | None = None) -> dict:
    """Train; returns final figures. `reward_model` replaces the one built from the flags (tests)."""
    check_ranges(args, RANGES)
    if args.end_e > args.start_e:
        fail(f"--end-e ({args.end_e}) must not exceed --start-e ({args.start_e}): epsilon decays from start-e to end-e.")
    check_reward_args(args, loads_weights=reward_model is None)
    run_name = f"CartPole__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join(args.output_dir, run_name)
    seed_everything(args.seed, args.torch_deterministic)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # The reward model: text embeddings once, then the reward landscape of the prompt.
    if args.reward == "clip" and reward_model is None:
        model, tokenizer = load_clip(args.clip_model, args.clip_pretrained, device)
        reward_model = CLIPReward(model, tokenizer, args.prompt, args.baseline_prompt, args.alpha, device=device,
                                  chunk_size=args.clip_chunk_size, precision=choose_precision(args.clip_precision, device))
    writer = SummaryWriter(run_dir)
    write_hyperparameters(writer, args)
    frame_size = reward_model.image_size if reward_model is not None else None
    if reward_model is not None:
        angles = np.linspace(-0.5, 0.5, args.landscape_points)
        frames, upright = landscape_frames(frame_size, angles)
        rewards = reward_model(frames)
        fig = plot_reward_landscape(angles, rewards, upright, "pole angle (rad)", "upright (ground truth)",
                                    f"{args.prompt[0]!r}, alpha={args.alpha}",
                                    os.path.join(run_dir, "reward_landscape.png"))
        writer.add_figure("reward_landscape", fig)
        gap = rewards[upright].mean() - rewards[~upright].mean()
        writer.add_scalar("landscape/upright_minus_fallen", gap, 0)
        print(f"reward landscape: mean CLIP reward upright - fallen = {gap:.4g} (positive: the prompt can work)")

    envs = gym.vector.SyncVectorEnv([make_env(args.episode_length, frame_size) for _ in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    q_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(args.buffer_size, obs_dim, (), np.int64, device)
    is_success = lambda true_return: true_return == args.episode_length  # noqa: E731  (upright at every step)
    queue, stats = RewardQueue(reward_model, rb), EpisodeStats(args.num_envs, is_success, writer)
    timings = dict(simulation=0.0, rendering=0.0, clip=0.0, updates=0.0)
    start_time, global_step, updates_done, target_updates_done, next_video = time.time(), 0, 0, 0, 0
    losses = {}

    def collect_rewards():
        stats.add(queue.collect(), global_step)
        timings["clip"] = queue.clip_seconds

    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    while global_step < args.total_timesteps:
        epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps,
                                  global_step)
        if global_step < args.learning_starts or random.random() < epsilon:  # random until learning starts (SB3)
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = q_network(torch.as_tensor(obs, device=device)).argmax(dim=1).cpu().numpy()
        obs = step_envs(envs, obs, actions, rb, queue, timings)
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
                losses = dqn_update(q_network, target_network, optimizer, rb.sample(args.batch_size), args.gamma,
                                    args.max_grad_norm)
            updates_done = updates_owed
            timings["updates"] += time.perf_counter() - start
            sps = log_training_phase(writer, losses, timings, global_step, start_time)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            recent = f"{np.mean(stats.successes):.2f}" if stats.successes else "-"
            print(f"step {global_step}: SPS {sps}, td_loss {losses['td_loss']:.4f}, success (last 10 episodes) {recent}")

        # Target network: a Polyak step every `target-network-frequency` transitions. (SB3 makes at most one per
        # vector step, every max(interval // num_envs, 1) of them: the same as here with up to 8 envs.)
        while target_updates_done < global_step // args.target_network_frequency:
            polyak_update(q_network, target_network, args.tau)
            target_updates_done += 1

        if args.capture_video and global_step >= next_video:
            episode = evaluate(q_network, reward_model, args, device, 1, frame_size or (224, 224), args.seed)[0]
            os.makedirs(os.path.join(run_dir, "videos"), exist_ok=True)
            save_video(episode["frames"], episode["clip_rewards"],
                       os.path.join(run_dir, "videos", f"eval_step{global_step}.gif"))
            next_video += args.video_interval
    collect_rewards()
    envs.close()
    loop_seconds = time.time() - start_time  # training only: the final evaluation is not in the SPS

    results = evaluate(q_network, reward_model, args, device, args.eval_episodes, frame_size, args.seed + 10_000)
    mean = lambda key: float(np.mean([r[key] for r in results])) if results else float("nan")  # noqa: E731
    final = dict(
        eval_success_rate=mean("success"), eval_episodic_return=mean("true_return"), eval_clip_return=mean("clip_return"),
        train_success_rate_last10=float(np.mean(stats.successes)) if stats.successes else float("nan"),
        **losses, global_step=global_step, gradient_steps_done=updates_done, target_updates_done=target_updates_done,
        run_dir=run_dir, replay_buffer=rb, sps=global_step / loop_seconds, wall_seconds=time.time() - start_time,
        timings=timings, precision=getattr(reward_model, "precision", None),
    )
    if results:
        writer.add_scalar("eval/success_rate", final["eval_success_rate"], global_step)
        writer.add_scalar("eval/episodic_return", final["eval_episodic_return"], global_step)
        if reward_model is not None:
            writer.add_scalar("eval/clip_return", final["eval_clip_return"], global_step)
    if args.save_model:
        model_path = os.path.join(run_dir, f"{args.exp_name}.cleanrl_model")
        torch.save(q_network.state_dict(), model_path)
        final["model_path"] = model_path
        print(f"model saved to {model_path}")
    print(f"eval: success rate {final['eval_success_rate']:.2f}, return {final['eval_episodic_return']:.1f}, "
          f"CLIP return {final['eval_clip_return']:.4g}")
    write_results(run_dir, final=final, args=args)
    writer.close()
    return final


if __name__ == "__main__":
    main(tyro.cli(Args))
