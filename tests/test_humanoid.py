"""sac_clip_humanoid.py: the paper's Humanoid (no termination, 100 steps, its scene and camera) and the loop.

Rendering uses MuJoCo's headless OpenGL: Mesa's software EGL or OSMesa on a CPU (CI installs them).
"""

import importlib.util
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, needs_gl, RobotWidthEncoder, capture_buffers, humanoid, read_scalars, report_args_printed

spec = importlib.util.spec_from_file_location("pose_contact_sheet", os.path.join(ROOT, "benchmarks", "pose_contact_sheet.py"))
contact_sheet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(contact_sheet)

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
def test_short_run_trains_logs_and_saves(tiny_clip, tmp_path, capsys):
    name, checkpoint, _ = tiny_clip
    args = humanoid.Args(baseline_episodes=1, clip_model=name, clip_pretrained=checkpoint, alpha=0.5, num_envs=3, episode_length=20,
                         total_timesteps=300, learning_starts=150, train_frequency=30, gradient_steps=4,
                         batch_size=32, hidden_size=32, eval_episodes=1, video_interval=10**9,
                         clip_precision="fp32", output_dir=str(tmp_path), save_model=True, capture_video=True,
                         fast_render=True)  # shadows cost ~0.15 s a frame in software (the CLI test keeps them)
    result = humanoid.main(args)
    report = report_args_printed(capsys.readouterr().out)  # the landscape line names the reward report of this run
    assert (report.env, report.task, report.camera, report.textured, report.fast_render) == (
        "humanoid", "kneeling", "paper", True, True)
    assert (report.clip_model, report.clip_pretrained, report.alpha) == ((name,), (checkpoint,), (0.5,))
    assert report.prompt == (humanoid.TASKS["kneeling"].prompt,) and report.baseline_prompt == args.baseline_prompt
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


@pytest.mark.parametrize("bootstrap", [False, True], ids=["paper", "bootstrap-time-limit"])
def test_ground_truth_run_trains_on_gymnasiums_reward(tmp_path, monkeypatch, bootstrap):
    """Every stored reward and termination is gymnasium's for that transition: replaying the stored actions
    in fresh environments with the same seeds gives them back. A fall is terminal either way; the time limit
    is terminal as in the paper's runs, and not with --bootstrap-time-limit."""
    args = humanoid.Args(baseline_episodes=1, reward="ground-truth", clip_model="no-such-model", num_envs=2, episode_length=30,
                         total_timesteps=400, learning_starts=200, train_frequency=100, gradient_steps=4,
                         batch_size=32, hidden_size=32, eval_episodes=0, output_dir=str(tmp_path),
                         bootstrap_time_limit=bootstrap, fast_render=True)
    buffers = capture_buffers(humanoid, monkeypatch)
    result = humanoid.main(args)
    scalars = read_scalars(result["run_dir"])
    assert "charts/episodic_return" in scalars and "charts/episodic_clip_return" not in scalars
    rb = buffers[0]
    for i in range(args.num_envs):  # transitions are stored step by step, env 0 then env 1
        env = humanoid.make_env(args.episode_length, terminate=True)()
        env.reset(seed=args.seed + i)
        rewards, ends, falls = [], [], 0
        for action in rb.actions[i: rb.pos: args.num_envs]:
            _, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            ends.append(terminated or (truncated and not bootstrap))
            falls += terminated
            if terminated or truncated:
                env.reset()
        np.testing.assert_allclose(rb.rewards[i: rb.pos: args.num_envs], rewards, rtol=1e-5)
        np.testing.assert_array_equal(rb.terminations[i: rb.pos: args.num_envs], ends)
        assert falls >= 1  # random actions: the robot falls within a few dozen steps


@needs_gl
def test_frames_stay_right_after_another_env_is_closed():
    """Training renders with one OpenGL context per env; an evaluation env opened and closed (or dropped: its
    renderer frees its context when collected) in between must not leave them rendering with none (black)."""
    env = humanoid.make_env(20, SIZE)()
    env.reset(seed=0)
    before = env.render().copy()
    other = humanoid.make_env(20, SIZE)()
    other.reset(seed=0)
    other.render()
    other.close()
    after = env.render()
    assert after.mean() > 50, "black frame: no OpenGL context is current once another env's is freed"
    np.testing.assert_array_equal(after, before)


# --- learning from pixels with a stand-in reward model ----------------------------------------------
def robot_width(model, data) -> float:
    """The robot's extent across the paper camera's view (world y: the camera looks along -x), in metres, from
    the positions and sizes of its spheres and capsules: the ground truth that RobotWidthEncoder reads from pixels."""
    import mujoco

    robot = model.geom_bodyid > 0  # body 0 is the world (the floor)
    centre, axis_y = data.geom_xpos[robot, 1], data.geom_xmat[robot, 5]  # a geom's z axis: its capsule's axis
    capsule = model.geom_type[robot] == mujoco.mjtGeom.mjGEOM_CAPSULE
    reach = np.where(capsule, model.geom_size[robot, 1] * np.abs(axis_y), 0.0) + model.geom_size[robot, 0]
    return float((centre + reach).max() - (centre - reach).min())


def metres_across_the_frame(model) -> float:
    """Width of the world the paper camera's frame spans at its look-at distance (square frames)."""
    return 2 * humanoid.PAPER_CAMERA["distance"] * np.tan(np.radians(model.vis.global_.fovy) / 2)


@needs_gl
def test_width_stand_in_reads_the_robots_width():
    """On hand-built poses the stand-in's width (from the pixels that differ from the empty scene) is the
    robot's width from the simulation, within 3.5 pixels (perspective: the camera looks from 3.5 m, 10° down)."""
    encoder = RobotWidthEncoder(size=(64, 64))
    reward_model = humanoid.CLIPReward(encoder, encoder.tokenizer, ("a humanoid robot with its arms stretched out",),
                                       ("a humanoid robot",), alpha=0.0)
    env = humanoid.CLIPHumanoidEnv(frame_size=(64, 64), fast_render=True)  # the stand-in's scene: no shadows
    env.reset(seed=0)
    names = ["arms crossed", "hands on hips", "standing", "arms raised", "side splits"]  # narrowest to widest
    frames, widths = [], []
    for name in names:
        humanoid.set_pose(env, contact_sheet.POSES[name].joints, contact_sheet.POSES[name].pitch)
        frames.append(env.render().copy())
        widths.append(robot_width(env.model, env.data) / metres_across_the_frame(env.model))
    read = encoder.width(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()).numpy()
    np.testing.assert_allclose(read, widths, atol=3.5 / 64)
    assert np.all(np.diff(read) > 0)  # and ranks them as the simulation does: from 10 to 38 pixels wide
    rewards = reward_model(np.stack(frames)).cpu().numpy()
    np.testing.assert_allclose(rewards, np.cos(np.pi * np.clip((0.4 - read) / 0.25, 0, 1)), atol=1e-5)
    assert np.all(np.diff(rewards) > 0)  # wider, higher reward: -1 for crossed arms, 1 for the splits


def greedy_widths(actor, episode_length: int, episodes: int = 4) -> float:
    """Mean robot width (m) over the second half of deterministic episodes (`actor` None: random actions)."""
    env = humanoid.make_env(episode_length)()  # simulation only: nothing is rendered
    widths = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=100 + episode)
        env.action_space.seed(100 + episode)
        for t in range(episode_length):
            if actor is None:
                action = env.action_space.sample()
            else:
                with torch.no_grad():
                    action = actor(torch.as_tensor(obs)[None], deterministic=True)[0][0].numpy()
            obs, *_ = env.step(action)
            if t >= episode_length // 2:
                widths.append(robot_width(env.unwrapped.model, env.unwrapped.data))
    return float(np.mean(widths))


def width_of_state(env, obs) -> float:
    """robot_width / metres_across_the_frame of the state an observation shows (gymnasium's humanoid observation
    starts with qpos without x and y, which do not change the robot's width)."""
    env.set_state(np.concatenate([[0.0, 0.0], obs[: env.model.nq - 2]]), np.zeros(env.model.nv))
    return robot_width(env.model, env.data) / metres_across_the_frame(env.model)


@needs_gl
@pytest.mark.long(25)
def test_agent_learns_to_stretch_its_arms_out_from_pixels(tmp_path, monkeypatch):
    """End to end: render -> stand-in encoder (the robot's width in pixels) -> CLIP reward formula -> SAC.

    The stand-in pays for a wide robot; the ground truth, never seen by the reward, is the robot's width in
    the simulation. Stretching the arms out to the sides is what the robot can learn fast: its shoulders
    (10 N·m at most) cannot lift the hands above the head within an episode, so the highest pixel stays the
    head's, which only drops as the robot slumps. 1,000 transitions, 800 gradient steps, 20-step episodes,
    64x64 frames: ~25 s on one CPU core. Measured (mean width over the second half of greedy episodes, m) on
    seeds 1-6: trained 0.84-0.92; random actions 0.66; the untrained actors 0.64-0.82; trained on a constant
    reward 0.59-0.71, and 0.88 on one seed in six (a drift that happened to spread the arms); on the negated
    reward 0.46-0.60. Both of those also fail the check of the stored rewards. The time-limit end is bootstrapped
    here: with the paper's terminal end, a twentieth of these transitions is terminal at a step the agent cannot
    see, and seed 1 learned no more than its untrained actor (0.82 against 0.81).
    """
    buffers = capture_buffers(humanoid, monkeypatch)
    encoder = RobotWidthEncoder(size=(64, 64))
    reward_model = humanoid.CLIPReward(encoder, encoder.tokenizer, ("a humanoid robot with its arms stretched out",),
                                       ("a humanoid robot",), alpha=0.0)
    args = humanoid.Args(baseline_episodes=1, task="arms-raised", clip_model="unused", num_envs=4, episode_length=20, total_timesteps=1000,
                         learning_starts=200, train_frequency=4, gradient_steps=4, batch_size=128, hidden_size=64,
                         gamma=0.8, learning_rate=3e-3, autotune=False, ent_coef=0.01,
                         eval_episodes=0, video_interval=10**9, clip_precision="fp32", output_dir=str(tmp_path),
                         save_model=True, seed=1, fast_render=True,  # the stand-in's scene: no shadows
                         bootstrap_time_limit=True)  # see below
    result = humanoid.main(args, reward_model=reward_model)
    assert result["gradient_steps_done"] == 800

    # Every reward it learned from is the stand-in's reading of the state its transition reached (a frame
    # of another state, or a blank one, would be off by far more than the reading's 3.5 pixels).
    rb = buffers[0]
    env = humanoid.CLIPHumanoidEnv(frame_size=(64, 64))
    env.reset(seed=0)
    true = np.array([width_of_state(env, obs) for obs in rb.next_obs[: rb.pos]])
    read = encoder.goal - np.arccos(np.clip(rb.rewards[: rb.pos], -1, 1)) / np.pi * encoder.span
    np.testing.assert_allclose(read, np.clip(true, encoder.goal - encoder.span, encoder.goal), atol=3.5 / 64)

    env = humanoid.make_env(args.episode_length)()
    make_actor = lambda: humanoid.Actor(env.observation_space, env.action_space, args.hidden_size, False, 0.0)  # noqa: E731
    trained = make_actor()
    trained.load_state_dict(torch.load(result["model_path"])["actor"])
    torch.manual_seed(args.seed)
    untrained = make_actor()  # the run's actor as it started: main seeds torch, then builds it first
    widths = dict(trained=greedy_widths(trained, args.episode_length),
                  untrained=greedy_widths(untrained, args.episode_length),
                  random=greedy_widths(None, args.episode_length))
    assert widths["trained"] > widths["random"] + 0.15 and widths["trained"] > widths["untrained"] + 0.05, widths


def test_without_headless_opengl_a_run_stops_with_one_sentence_before_clip_is_loaded(monkeypatch, tmp_path):
    def no_display(*args):
        raise RuntimeError("Cannot initialize a EGL device display.")

    monkeypatch.setattr(humanoid.mujoco, "GLContext", no_display)
    monkeypatch.setattr(humanoid, "load_clip_reward", lambda *a: pytest.fail("a CLIP model was loaded"))
    with pytest.raises(SystemExit, match=r"^error: MuJoCo cannot render headless with MUJOCO_GL=\w+ \(RuntimeError\): "
                                         r"install EGL .* set MUJOCO_GL=osmesa\.$"):
        humanoid.main(humanoid.Args(output_dir=str(tmp_path)))


@needs_gl
def test_the_scene_keeps_mujocos_shadows_and_multisampling_unless_fast_render():
    """The authors' scene kept MuJoCo's visual defaults: a shadow-casting light and a 4x multisampled offscreen
    buffer. --fast-render turns both off, and its frames then differ visibly (the floor renders darker too)."""
    frames = {}
    for fast in (False, True):
        env = humanoid.CLIPHumanoidEnv(frame_size=SIZE, fast_render=fast)
        env.reset(seed=0)
        assert env.model.light_castshadow.all() != fast and env.model.vis.quality.offsamples == (0 if fast else 4)
        assert env.model.vis.quality.shadowsize == (0 if fast else 4096)
        frames[fast] = env.render().astype(int)
        env.close()
    assert np.abs(frames[False] - frames[True]).mean() > 10


@needs_gl
def test_a_renderer_that_ignores_the_configured_camera_stops_the_run_before_clip_is_loaded(monkeypatch, tmp_path):
    """gymnasium before 1.4 rendered an unnamed camera through the model's tracking camera ("track"), which
    ignores the paper's distance, angles and look-at: the run must stop, not train on other pictures."""
    from gymnasium.envs.mujoco import mujoco_rendering

    init = mujoco_rendering.MujocoRenderer.__init__

    def tracking_camera_init(self, model, *args, **kwargs):
        init(self, model, *args, **kwargs)
        self.camera_id = humanoid.mujoco.mj_name2id(model, humanoid.mujoco.mjtObj.mjOBJ_CAMERA, "track")

    monkeypatch.setattr(mujoco_rendering.MujocoRenderer, "__init__", tracking_camera_init)
    monkeypatch.setattr(humanoid, "load_clip_reward", lambda *a: pytest.fail("a CLIP model was loaded"))
    with pytest.raises(SystemExit, match=r"^error: the renderer does not use the --camera paper view \(camera id \d+, "
                                         r"mjCAMERA_FIXED\): install the gymnasium of requirements\.txt \(here: 1\.4\.\d+\)\.$"):
        humanoid.main(humanoid.Args(output_dir=str(tmp_path)))
    monkeypatch.undo()  # gymnasium as installed: both cameras pass
    humanoid.require_configured_camera("paper")
    humanoid.require_configured_camera("stock")


@needs_gl
def test_the_run_prints_its_opengl_renderer_and_warns_when_a_gpu_run_draws_in_software(capsys, tmp_path):
    humanoid.main(humanoid.Args(baseline_episodes=1, reward="pose", num_envs=1, total_timesteps=20, learning_starts=10, train_frequency=10,
                                gradient_steps=1, batch_size=8, hidden_size=8, episode_length=10, eval_episodes=0,
                                output_dir=str(tmp_path)))
    printed = capsys.readouterr().out
    renderer = humanoid.require_gl()
    assert f"MuJoCo renders with OpenGL: {renderer} (MUJOCO_GL=" in printed and "warning: MuJoCo draws" not in printed
    # The warning's rule, for the GPU runs no machine here can make:
    for name in ("llvmpipe (LLVM 15.0.6, 256 bits)", "softpipe"):
        warning = humanoid.software_gl_warning(name, "cuda")
        assert warning.startswith(f"warning: MuJoCo draws on the CPU ({name}) on a GPU run: install the NVIDIA "
                                  "driver's EGL library") and warning.endswith("so that frames are drawn on the GPU.")
        assert humanoid.software_gl_warning(name, "cpu") is None  # a CPU run draws on the CPU anyway
    assert humanoid.software_gl_warning("NVIDIA H200/PCIe/SSE2", "cuda") is None
