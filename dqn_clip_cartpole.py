"""DQN on CartPole with a CLIP reward model (VLM-RM).

Reproduces the CartPole experiment of "Vision-Language Models are Zero-Shot Reward Models for
Reinforcement Learning" (Rocamonde et al., ICLR 2024): the agent never sees CartPole's reward.
Each state it reaches is rendered, embedded by CLIP and compared with the embedding of a sentence
("pole vertically upright on top of the cart"), sharpened by a baseline sentence ("pole and cart")
through goal-baseline projection with weight alpha.

    python dqn_clip_cartpole.py --alpha 0.5
    python dqn_clip_cartpole.py --clip-model ViT-B-32 --clip-pretrained /path/to/checkpoint.pt
    python dqn_clip_cartpole.py --reward ground-truth      # the RL half alone, no CLIP

Where each part is: the arguments, `Args`; the environment, `CLIPCartPoleEnv`; the reward, `CLIPReward`; the
update, `dqn_update`; the loop, `main`. Below `main`, for reference: the run's bookkeeping (start-up, the reward
landscape, resume, logging, results); the cart's motion with the walls, its drawing, greedy evaluation; the plumbing.
"""

import glob
import json
import logging
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
    torch_threads: int = 0
    """CPU threads of torch (0: torch's default, every core); runs sharing a machine each need their share (run_all.sh --jobs N gives each cores / N)"""
    output_dir: str = "runs"
    """folder that receives `<run name>/` with TensorBoard logs, figures, videos and the model"""
    capture_video: bool = False
    """if toggled, a greedy evaluation episode is saved as a GIF with the CLIP reward drawn on it"""
    video_interval: int = 100_000
    """transitions between two evaluation videos (with `--capture-video`)"""
    save_model: bool = False
    """if toggled, the Q-network weights are saved to `<run>/<exp name>.cleanrl_model`"""
    checkpoint_interval: int = 200_000
    """transitions between two checkpoints (`<run>/checkpoint_<step>.pt`, also one at the end; the newest two are kept)"""
    checkpoint_buffer: bool = True
    """if toggled, checkpoints hold the replay buffer (52 MB at the default size); `--no-checkpoint-buffer`: a resumed run fills a fresh one for learning-starts transitions before it trains again"""
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
    """`clip`: the CLIP reward; `ground-truth`: 1 while the pole is upright, else 0 (no CLIP model is loaded)"""
    prompt: tuple[str, ...] = ("pole vertically upright on top of the cart",)
    """goal prompt(s); several are averaged into one goal embedding"""
    baseline_prompt: tuple[str, ...] = ("pole and cart",)
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
    """pole angles in the reward-landscape sweep made before training"""

    # Environment
    num_envs: int = 8
    """the number of parallel environments (paper: 8 per GPU)"""
    episode_length: int = 200
    """steps per episode; episodes end only by this time limit"""
    bootstrap_time_limit: bool = False
    """if toggled, the time-limit end is a truncation, bootstrapped (the textbook target for a time-unaware agent); default: terminal, as the paper's runs stored it (Q-values then sum about one episode of rewards)"""

    # DQN: the paper's CartPole run, i.e. the authors' config run through SB3 with their config class's
    # defaults. SB3 counts train_freq and gradient_steps in vector steps of 8 envs; here every step count
    # is in transitions (summed over envs), so the updates per transition are the paper's for any --num-envs.
    total_timesteps: int = 3_000_000
    """total environment steps (transitions, summed over all envs)"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer (paper: 2.3e-3, which learned and then lost the task here; docs/faithfulness.md)"""
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
      else 0 (`info["upright"]`). The paper's "cart in bounds" holds by construction: the walls keep
      the cart within gymnasium's bounds test (out means |x| > 2.4), and a cart resting at the wall
      with its pole up is what the goal prompt describes. (Counting the wall as failure, a penalty
      that arrives ~100 steps after the drift that causes it, made DQN unstable.)
    """

    def __init__(self, frame_size=(224, 224)):
        super().__init__(render_mode="rgb_array")
        self.frame_size = frame_size  # (height, width) of rendered frames
        self.observation_space = gym.spaces.Box(
            np.array([-self.x_threshold, -np.inf, -np.pi, -np.inf], dtype=np.float32),
            np.array([self.x_threshold, np.inf, np.pi, np.inf], dtype=np.float32))

    def step(self, action):
        self.state = move_with_walls(self, action)  # gymnasium's equations of motion, with the walls (below main)
        upright = self.is_upright()
        return np.array(self.state, dtype=np.float32), float(upright), False, False, {"upright": upright}

    def is_upright(self) -> bool:
        x, _, theta, _ = self.state
        return bool(abs(theta) <= self.theta_threshold_radians and abs(x) <= self.x_threshold)

    def snapshot(self):  # the simulation state, for checkpoints
        return self.state.copy()

    def restore(self, snapshot):
        self.state = snapshot.copy()

    def set_state(self, x=0.0, x_dot=0.0, theta=0.0, theta_dot=0.0):
        """Place the system in a given state (for the reward landscape and tests)."""
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)

    def render(self):
        """gymnasium's 600x400 scene drawn at the frame size, stretched as the authors resized it (below main)."""
        return draw_cartpole(self)


def make_env(episode_length: int, frame_size=(224, 224)):
    return lambda: gym.wrappers.TimeLimit(CLIPCartPoleEnv(frame_size), max_episode_steps=episode_length)


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
# DQN
# ---------------------------------------------------------------------------------------------
class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden_size: int = 256):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(obs_dim, hidden_size), nn.ReLU(),
                                     nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, n_actions))

    def forward(self, x):
        return self.network(x)


def dqn_update(q_network, target_network, optimizer, batch, gamma: float, max_grad_norm: float) -> dict:
    """One gradient step: Huber loss (as SB3's DQN) between Q(s, a) and r + γ max_a' Q_target(s', a'),
    with no bootstrap from a transition stored as terminal (by default also an episode's last, as the paper)."""
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
    envs = gym.vector.SyncVectorEnv([make_env(args.episode_length, frame_size) for _ in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    q_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork(obs_dim, n_actions, args.hidden_size).to(device)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(args.buffer_size, obs_dim, (), np.int64, device)
    is_success = lambda true_return, length: true_return == length  # noqa: E731  (upright at every step)

    # The loop's position: transitions collected, rollouts ended, gradient steps and target updates, the next video.
    global_step = rollouts_done = updates_done = target_updates_done = next_video = 0
    obs, _ = envs.reset(seed=args.seed)
    envs.action_space.seed(args.seed)
    episode_slots, successes, losses = [[] for _ in range(args.num_envs)], deque(maxlen=10), {}
    training_starts = args.learning_starts  # a resume into a fresh buffer moves it (restore_run)
    if state:  # everything as it was at the checkpoint: the run goes on exactly as an uninterrupted one
        global_step, rollouts_done, updates_done, target_updates_done, next_video = (state[key] for key in POSITION)
        obs, episode_slots, successes, losses, training_starts = restore_run(
            state, args, envs, rb, q_network, target_network, optimizer)
    to_score, finished = [], []  # this rollout's frames, and the episodes that ended in it
    start_time, start_step, seconds_before = time.time(), global_step, state["seconds"] if state else 0.0
    elapsed = lambda: seconds_before + time.time() - start_time  # noqa: E731  (of this session and those before)
    checkpoints_done = global_step // args.checkpoint_interval
    with StopRequests() as stop:
        while global_step < args.total_timesteps:
            decay = global_step / (args.exploration_fraction * args.total_timesteps)  # from start-e to end-e, then flat
            epsilon = max(args.start_e + (args.end_e - args.start_e) * decay, args.end_e)
            if global_step < args.learning_starts or random.random() < epsilon:  # random until learning starts (SB3)
                actions = envs.action_space.sample()
            else:
                with torch.no_grad():
                    actions = q_network(torch.as_tensor(obs, device=device)).argmax(dim=1).cpu().numpy()
            next_obs, true_rewards, terminations, truncations, _ = envs.step(actions)
            # The reward to learn from: CLIP's (NaN in the buffer until the frame of the state reached has been
            # scored), or the ground truth's with --reward ground-truth.
            # The paper's envs set terminated=True at the time limit, so SB3 never bootstrapped from an episode's
            # last state; --bootstrap-time-limit stores the time limit as a truncation instead (bootstrapped).
            dones = terminations | truncations
            slots = rb.add(obs, next_obs, actions, np.nan if uses_clip else true_rewards, true_rewards,
                           terminations if args.bootstrap_time_limit else dones)
            if uses_clip:
                to_score.append((slots, np.stack(envs.call("render"))))
            global_step += args.num_envs
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
                rollouts_before, rollouts_done = rollouts_done, global_step // args.train_frequency
                if to_score:
                    slots, frames = (np.concatenate(parts) for parts in zip(*to_score))
                    rb.rewards[slots] = reward_model(frames).cpu().numpy()
                successes.extend(log_rollout(writer, rb, finished, is_success, uses_clip, global_step))
                to_score, finished = [], []
                waiting = training_starts // args.train_frequency  # rollouts before the first training phase
                phases = max(rollouts_done - waiting, 0) - max(rollouts_before - waiting, 0)
                for _ in range(args.gradient_steps * phases):
                    losses = dqn_update(q_network, target_network, optimizer, rb.sample(args.batch_size), args.gamma,
                                        args.max_grad_norm)
                if phases:
                    updates_done += args.gradient_steps * phases
                    log_training_phase(writer, args, global_step, losses, epsilon, successes,
                                       sps=int((global_step - start_step) / (time.time() - start_time)))

            # Target network: a Polyak step every `target-network-frequency` transitions. (SB3 makes at most one per
            # vector step, every max(interval // num_envs, 1) of them: the same as here when num-envs divides 8.)
            while target_updates_done < global_step // args.target_network_frequency:
                polyak_update(q_network, target_network, args.tau)
                target_updates_done += 1

            if args.capture_video and global_step >= next_video:
                save_eval_video(q_network, reward_model, args, device, run_dir, global_step)
                next_video += args.video_interval

            # Checkpoints at the end of a rollout (nothing waits for CLIP then): every checkpoint-interval
            # transitions, at the end, and when SIGTERM or Ctrl-C asked the run to stop.
            if rollout_ends and (stop or global_step // args.checkpoint_interval > checkpoints_done
                                 or global_step >= args.total_timesteps):
                checkpoints_done = global_step // args.checkpoint_interval
                save_checkpoint(run_dir, dict(
                    args=flags, seconds=elapsed(), global_step=global_step, rollouts_done=rollouts_done,
                    updates_done=updates_done, target_updates_done=target_updates_done, next_video=next_video,
                    training_starts=training_starts, q_network=q_network.state_dict(),
                    target_network=target_network.state_dict(), optimizer=optimizer.state_dict(), obs=obs,
                    episode_slots=episode_slots, successes=list(successes), losses=losses,
                    **random_and_env_state(envs, rb, args.checkpoint_buffer)))
                if stop:
                    stop_after_checkpoint(stop, global_step, run_dir, writer, args)
    envs.close()
    sps = global_step / elapsed()  # training only: not the final evaluation
    return final_results(args, q_network, reward_model, device, rb, writer, successes, elapsed, dict(
        **losses, global_step=global_step, gradient_steps_done=updates_done, target_updates_done=target_updates_done,
        run_dir=run_dir, sps=sps))


# ---------------------------------------------------------------------------------------------
# Run bookkeeping, below the method: start-up, checkpoints, logging, final results
# ---------------------------------------------------------------------------------------------
# Allowed values of the numeric flags, checked before anything is loaded.
RANGES = dict(alpha="[0, 1]", num_envs="[1, inf)", episode_length="[1, inf)", total_timesteps="[1, inf)",
              learning_rate="(0, inf)", buffer_size="[1, inf)", gamma="[0, 1]", tau="(0, 1]",
              target_network_frequency="[1, inf)", batch_size="[1, inf)", start_e="[0, 1]", end_e="[0, 1]",
              exploration_fraction="(0, 1]", learning_starts="[0, inf)", train_frequency="[1, inf)",
              gradient_steps="[1, inf)", max_grad_norm="(0, inf)", hidden_size="[1, inf)", eval_episodes="[0, inf)",
              video_interval="[1, inf)", clip_chunk_size="[0, inf)",
              landscape_points="[2, inf)", checkpoint_interval="[1, inf)", torch_threads="[0, inf)")


def start_up(args, reward_model: CLIPReward | None) -> tuple:
    """Bad flags stop the run before anything loads, then every random stream is seeded and the device chosen; a
    CLIP run loads its reward model (unless a test gave one). Returns the flags to keep, the device and the model."""
    check_flags(args, RANGES)
    flags = dict(vars(args))  # for checkpoints: the flags as the run began
    if args.end_e > args.start_e:
        fail(f"--end-e ({args.end_e}) must not exceed --start-e ({args.start_e}): epsilon decays from one to the other.")
    seed_everything(args.seed, args.torch_deterministic)
    if args.torch_threads:  # else torch spins a thread on every core, and runs sharing a machine slow each other
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.reward == "clip" and reward_model is None:
        reward_model = load_clip_reward(args, device)
    return flags, device, reward_model


def open_run(args, state: dict | None, reward_model: CLIPReward | None) -> tuple[str, SummaryWriter]:
    """The run's folder (a resumed run's own) and TensorBoard writer; a new CLIP run first logs its reward landscape."""
    run_name = f"CartPole__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.normpath(args.resume or os.path.join(args.output_dir, run_name))
    writer = open_writer(run_dir, args, resume_step=state["global_step"] + 1 if state else None)
    if reward_model is not None and not state:  # the reward landscape: are upright poles ranked above fallen ones?
        log_reward_landscape(reward_model, args, writer, run_dir)
    return run_dir, writer


def log_reward_landscape(reward_model: CLIPReward, args, writer, run_dir: str):
    """Before training, whether the prompt can work at all (the paper's figure 2), and how long CLIP will take."""
    angles = np.linspace(-0.5, 0.5, args.landscape_points)
    frames, upright = landscape_frames(reward_model.image_size, angles)
    rewards = reward_model(frames).cpu().numpy()
    writer.add_figure("reward_landscape", plot_reward_landscape(
        angles, rewards, upright, "pole angle (rad)", "upright (ground truth)",
        f"{args.prompt[0]!r}, alpha={args.alpha}", os.path.join(run_dir, "reward_landscape.png")))
    gap = rewards[upright].mean() - rewards[~upright].mean()
    writer.add_scalar("landscape/upright_minus_fallen", gap, 0)
    print(f"reward landscape: mean CLIP reward upright - fallen = {gap:.4g} (positive: the prompt can work); on "
          f"a grid of labelled states, with other prompts and alphas: {reward_report_command('cartpole', args, args.prompt)}")
    estimate_run_time(reward_model, frames, args)


# The loop's position in a checkpoint (main reads it back under these names).
POSITION = ("global_step", "rollouts_done", "updates_done", "target_updates_done", "next_video")


def restore_run(state: dict, args, envs, rb, q_network, target_network, optimizer) -> tuple:
    """The networks, optimizer, random streams, envs and replay buffer as they were at the checkpoint; returns
    the loop's episodes in progress, recent successes, last losses and the transition count where training
    starts. A checkpoint without its buffer (--no-checkpoint-buffer) starts new episodes into a fresh buffer, and
    training waits for learning-starts new transitions."""
    q_network.load_state_dict(state["q_network"])
    target_network.load_state_dict(state["target_network"])
    optimizer.load_state_dict(state["optimizer"])
    restore_random_and_env_state(state, envs, rb)
    obs, episode_slots, training_starts = state["obs"], state["episode_slots"], state["training_starts"]
    if state["buffer"] is None:
        obs, episode_slots = envs.reset()[0], [[] for _ in range(args.num_envs)]
        training_starts = state["global_step"] + args.learning_starts  # exploration keeps the run's own
    return obs, episode_slots, deque(state["successes"], maxlen=10), state["losses"], training_starts


def log_training_phase(writer, args, step: int, losses: dict, epsilon: float, successes, sps: int):
    """After each training phase, its losses in TensorBoard and a progress line, readable in a log file too."""
    for name, value in {**losses, "epsilon": epsilon, "SPS": sps}.items():
        writer.add_scalar(f"losses/{name}" if name in losses else f"charts/{name}", value, step)
    recent = f"{np.mean(successes):.2f}" if successes else "-"
    print(f"{progress(step, args.total_timesteps, sps)}, td_loss {losses['td_loss']:.4f}, "
          f"success (last 10 episodes) {recent}", flush=True)


def save_eval_video(q_network, reward_model, args, device, run_dir: str, step: int):
    """With --capture-video: a greedy episode as a GIF with CLIP's rewards on it, to see what the agent does."""
    episode = evaluate(q_network, reward_model, args, device, 1, args.seed)[0]
    save_video(episode["frames"], episode["clip_rewards"], os.path.join(run_dir, "videos", f"eval_step{step}.gif"),
               args.track)


def final_results(args, q_network, reward_model, device, rb, writer, successes, elapsed, training: dict) -> dict:
    """After training, how good the greedy policy is: the final figures, logged, printed and written to results.json."""
    uses_clip = reward_model is not None
    results = evaluate(q_network, reward_model, args, device, args.eval_episodes, args.seed + 10_000)
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
    write_results(training["run_dir"], args, final, q_network.state_dict())
    close_writer(writer, args)
    return final


# ---------------------------------------------------------------------------------------------
# Reference, below the method: the cart's motion and its drawing, the landscape's frames, greedy evaluation
# ---------------------------------------------------------------------------------------------
def move_with_walls(env, action) -> np.ndarray:
    """gymnasium's CartPole equations of motion (Euler integration), written out so that the walls can act on them."""
    x, x_dot, theta, theta_dot = env.state
    force = env.force_mag if action == 1 else -env.force_mag
    sin, cos = np.sin(theta), np.cos(theta)
    temp = (force + env.polemass_length * theta_dot**2 * sin) / env.total_mass
    theta_acc = (env.gravity * sin - cos * temp) / (
        env.length * (4.0 / 3.0 - env.masspole * cos**2 / env.total_mass))
    x_acc = temp - env.polemass_length * theta_acc * cos / env.total_mass
    wall = np.sign(x) if abs(x) >= env.x_threshold else 0.0  # +1 / -1 while at the right / left wall
    if x_acc * wall > 0 and x_dot * wall >= 0:
        # At rest against the wall and pushed into it: the wall holds the cart, and the pole swings
        # about a fixed pivot (a uniform rod of half-length l: θ'' = 3 g sin θ / 4l). Pushed away,
        # or already moving away, the cart follows gymnasium's free equations.
        x_acc, theta_acc = 0.0, 3.0 * env.gravity * sin / (4.0 * env.length)
    x, x_dot = x + env.tau * x_dot, x_dot + env.tau * x_acc
    theta, theta_dot = theta + env.tau * theta_dot, theta_dot + env.tau * theta_acc
    if abs(x) > env.x_threshold:
        # The cart hits the wall (inelastic): it stops there, and the sudden stop of the pivot passes
        # to the pole (angular momentum about the pivot is conserved through the impact).
        x = float(np.clip(x, -env.x_threshold, env.x_threshold))
        if x_dot * np.sign(x) > 0:
            theta_dot += 3.0 * np.cos(theta) * x_dot / (4.0 * env.length)
            x_dot = 0.0
    theta = (theta + np.pi) % (2 * np.pi) - np.pi
    return np.array((x, x_dot, theta, theta_dot), dtype=np.float64)


def draw_cartpole(env) -> np.ndarray:
    """gymnasium's 600x400 scene drawn straight at the frame size, stretched as the authors resized it."""
    import pygame
    from pygame import gfxdraw

    height, width = env.frame_size
    sx, sy = width / 600, height / 400  # stock-scene coordinates -> frame pixels
    scale = 600 / (2 * env.x_threshold)  # stock pixels per metre
    x, _, theta, _ = env.state
    cart_x, cart_y = x * scale + 300, 100  # stock coordinates, y up from the bottom
    axle_y, pole_len, pole_w = cart_y + 30 / 4, scale * 2 * env.length, 10

    def polygon(points, color):  # y up -> y down, stretched to the frame
        points = [(px * sx, (400 - py) * sy) for px, py in points]
        gfxdraw.aapolygon(surf, points, color)
        gfxdraw.filled_polygon(surf, points, color)

    surf = pygame.Surface((width, height))
    surf.fill((255, 255, 255))
    gfxdraw.hline(surf, 0, width, int((400 - cart_y) * sy), (0, 0, 0))
    polygon([(cart_x + dx, cart_y + dy) for dx, dy in ((-25, -15), (-25, 15), (25, 15), (25, -15))], (0, 0, 0))
    c, s = np.cos(theta), np.sin(theta)  # theta > 0: the pole leans right
    corners = ((-pole_w / 2, -pole_w / 2), (-pole_w / 2, pole_len - pole_w / 2),
               (pole_w / 2, pole_len - pole_w / 2), (pole_w / 2, -pole_w / 2))
    polygon([(cart_x + px * c + py * s, axle_y - px * s + py * c) for px, py in corners], (202, 152, 101))
    ax, ay, rx, ry = cart_x * sx, (400 - axle_y) * sy, max(1, int(pole_w / 2 * sx)), max(1, int(pole_w / 2 * sy))
    gfxdraw.aaellipse(surf, int(ax), int(ay), rx, ry, (129, 132, 203))
    gfxdraw.filled_ellipse(surf, int(ax), int(ay), rx, ry, (129, 132, 203))
    return np.ascontiguousarray(pygame.surfarray.pixels3d(surf).transpose(1, 0, 2))


def landscape_frames(frame_size, angles):
    """Frames of the cart at the centre, at rest, with the pole at each angle, and which are upright."""
    env, frames, upright = CLIPCartPoleEnv(frame_size), [], []
    for angle in angles:
        env.set_state(theta=float(angle))
        frames.append(env.render())
        upright.append(env.is_upright())
    return np.stack(frames), np.array(upright)


def evaluate(q_network, reward_model, args, device, episodes: int, seed: int) -> list:
    """Greedy episodes (no exploration): per episode its success, returns, and frames and CLIP rewards."""
    env = make_env(args.episode_length, reward_model.image_size if reward_model is not None else (224, 224))()
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        frames, true_return, done = [], 0.0, False
        while not done:
            with torch.no_grad():
                action = q_network(torch.as_tensor(obs, device=device)[None]).argmax(dim=1).item()
            obs, reward, terminated, truncated, _ = env.step(action)
            true_return, done = true_return + reward, terminated or truncated
            if reward_model is not None or args.capture_video:
                frames.append(env.render())
        clip_rewards = reward_model(np.stack(frames)).cpu().numpy() if reward_model is not None else None
        results.append(dict(success=float(true_return == args.episode_length), true_return=true_return,
                            clip_return=float(clip_rewards.sum()) if clip_rewards is not None else np.nan,
                            frames=frames, clip_rewards=clip_rewards))
    return results


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
