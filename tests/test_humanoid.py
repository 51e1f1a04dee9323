"""sac_clip_humanoid.py: the paper's Humanoid (no termination, 100 steps, its scene and camera) and the loop.

Rendering uses MuJoCo's headless OpenGL: Mesa's software EGL or OSMesa on a CPU (CI installs them).
"""

import os

import numpy as np
import pytest
import torch

from conftest import capture_buffers, humanoid, read_scalars

needs_gl = pytest.mark.skipif(humanoid.GL_BACKEND is None, reason="no headless OpenGL (EGL or OSMesa)")
SIZE = (64, 80)  # small frames keep software rendering fast


def fall(env):
    """Put the robot's torso at 0.3 m: below gymnasium's healthy range (1.0 to 2.0 m)."""
    qpos, qvel = env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy()
    qpos[2] = 0.3
    env.unwrapped.set_state(qpos, qvel)


def test_falling_does_not_end_an_episode_and_episodes_last_100_steps():
    env = humanoid.make_env(episode_length=100)()
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32
    fall(env)
    for t in range(1, 101):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and truncated == (t == 100)
        assert obs.dtype == np.float32 and np.isfinite(obs).all()


def test_ground_truth_runs_keep_gymnasiums_termination():
    env = humanoid.make_env(episode_length=100, terminate=True)()
    env.reset(seed=0)
    fall(env)
    _, _, terminated, _, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert terminated


@needs_gl
def test_paper_camera_renders_a_fixed_world_view():
    """Move the robot 1 m sideways: the floor far from it stays pixel for pixel where it was."""
    env = humanoid.CLIPHumanoidEnv(frame_size=SIZE)
    env.reset(seed=0)
    before = env.render()
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    qpos[1] += 1.0
    env.set_state(qpos, qvel)
    after = env.render()
    assert (before != after).any()  # the robot moved in the picture
    corner = (slice(-8, None), slice(0, 8))  # bottom-left floor, away from the robot
    np.testing.assert_array_equal(before[corner], after[corner])
    # The camera MuJoCo renders with is the paper's: free (not tracking a body), distance 3.5, looking at
    # (0, 0, 1) from an elevation of -10° and an azimuth of 180°.
    import mujoco

    camera = env.mujoco_renderer._get_viewer("rgb_array").cam
    assert camera.type == mujoco.mjtCamera.mjCAMERA_FREE
    assert (camera.distance, camera.azimuth, camera.elevation) == (3.5, 180.0, -10.0)
    np.testing.assert_array_equal(camera.lookat, [0.0, 0.0, 1.0])


@needs_gl
def test_textured_frames_differ_from_stock_and_are_not_blank():
    frames = {}
    for textured in (True, False):
        env = humanoid.CLIPHumanoidEnv(frame_size=SIZE, textured=textured, camera="stock")
        env.reset(seed=0)
        frames[textured] = env.render()
        assert frames[textured].shape == (*SIZE, 3) and frames[textured].dtype == np.uint8
    textured = frames[True]
    assert textured.std() > 10 and len(np.unique(textured.reshape(-1, 3), axis=0)) > 100
    assert np.abs(textured.astype(int) - frames[False]).mean() > 20


@needs_gl
def test_frames_are_rendered_at_the_requested_size_and_show_the_state_reached():
    env = humanoid.make_env(episode_length=3, frame_size=SIZE)()
    env.reset(seed=0)
    first = env.render()
    for _ in range(3):
        _, _, _, truncated, _ = env.step(env.action_space.sample())
    last = env.render()
    assert truncated and last.shape == (*SIZE, 3)
    assert (last != first).any()  # the last state, not a fresh start


@needs_gl
def test_short_run_trains_logs_and_saves(tiny_clip, tmp_path):
    name, checkpoint, _ = tiny_clip
    args = humanoid.Args(clip_model=name, clip_pretrained=checkpoint, alpha=0.5, num_envs=3, episode_length=20,
                         total_timesteps=300, learning_starts=150, train_frequency=30, gradient_steps=4,
                         batch_size=32, hidden_size=32, clip_batch_size=64, eval_episodes=1, video_interval=10**9,
                         clip_precision="fp32", output_dir=str(tmp_path), save_model=True, capture_video=True)
    result = humanoid.main(args)
    scalars = read_scalars(result["run_dir"])
    expected = {"losses/td_loss", "losses/q_values", "losses/actor_loss", "losses/ent_coef",
                "charts/episodic_clip_return", "charts/last_frame_clip_reward", "charts/SPS", "charts/epic_distance",
                "eval/clip_return", "eval/last_frame_clip_reward", "landscape/in_pose_minus_out"}
    assert expected <= set(scalars), expected - set(scalars)
    # The pose detector of --task (kneeling) is the ground truth: steps in the pose, success, their fraction.
    assert {"charts/episodic_return", "charts/success_rate", "charts/pose_fraction"} <= set(scalars)
    assert len(scalars["losses/td_loss"]) == 5  # phases at steps 180, 210, 240, 270, 300
    assert all(np.isfinite(v) for key in ("losses/td_loss", "losses/actor_loss") for _, v in scalars[key])
    assert len(scalars["charts/episodic_clip_return"]) == 300 // 20
    assert os.listdir(os.path.join(result["run_dir"], "strips")) and os.listdir(
        os.path.join(result["run_dir"], "videos"))

    saved = torch.load(result["model_path"])
    env = humanoid.make_env(20)()
    actor = humanoid.Actor(env.observation_space, env.action_space, 32, False, args.log_std_init)
    initial = {k: v.clone() for k, v in actor.state_dict().items()}
    actor.load_state_dict(saved["actor"])
    assert any(not torch.equal(initial[k], v) for k, v in actor.state_dict().items())


def test_ground_truth_run_trains_on_gymnasiums_reward(tmp_path, monkeypatch):
    """Every stored reward and termination is gymnasium's for that transition: replaying the stored actions
    in fresh environments with the same seeds gives them back, falls (terminal) and time limits (not) included."""
    args = humanoid.Args(reward="ground-truth", clip_model="no-such-model", num_envs=2, episode_length=30,
                         total_timesteps=400, learning_starts=200, train_frequency=100, gradient_steps=4,
                         batch_size=32, hidden_size=32, eval_episodes=0, output_dir=str(tmp_path))
    buffers = capture_buffers(humanoid, monkeypatch)
    result = humanoid.main(args)
    scalars = read_scalars(result["run_dir"])
    assert "charts/episodic_return" in scalars and "charts/episodic_clip_return" not in scalars
    rb = buffers[0]
    for i in range(args.num_envs):  # transitions are stored step by step, env 0 then env 1
        env = humanoid.make_env(args.episode_length, terminate=True)()
        env.reset(seed=args.seed + i)
        rewards, terminations = [], []
        for action in rb.actions[i: rb.pos: args.num_envs]:
            _, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            terminations.append(terminated)
            if terminated or truncated:
                env.reset()
        np.testing.assert_allclose(rb.rewards[i: rb.pos: args.num_envs], rewards, rtol=1e-5)
        np.testing.assert_array_equal(rb.terminations[i: rb.pos: args.num_envs], terminations)
    assert rb.terminations[: rb.pos].sum() >= 2  # random actions: the robot falls within a few dozen steps
