"""sac_clip_mountaincar.py: the paper's MountainCar, its picture-like renderer, SAC with gSDE, the loop."""

import os

import gymnasium as gym
import numpy as np
import open_clip
import pytest
import torch

from conftest import CarPositionEncoder, capture_buffers, is_car_red, mountaincar, read_scalars, report_args_printed
from test_reward import direct_reward
from test_training import REQUIRED_KEYS

OBSERVATION_SPACE = mountaincar.CLIPMountainCarEnv().observation_space
ACTION_SPACE = mountaincar.CLIPMountainCarEnv().action_space
GOAL = ("a car at the peak of the mountain, next to the yellow flag",)
BASELINE = ("a car in the mountain",)


def red_columns(frame):
    return np.nonzero(is_car_red(frame[..., 0], frame[..., 1], frame[..., 2]))[1]


def short_args(tmp_path, **overrides):
    settings = dict(clip_model="unused", total_timesteps=640, learning_starts=256, train_frequency=64,
                    gradient_steps=8, batch_size=64, episode_length=50, num_envs=2, eval_episodes=2,
                    landscape_points=9, clip_precision="fp32", output_dir=str(tmp_path), seed=1)
    settings.update(overrides)
    return mountaincar.Args(**settings)


@pytest.fixture
def car_position_reward():
    encoder = CarPositionEncoder(size=(96, 128))
    return mountaincar.CLIPReward(encoder, encoder.tokenizer, GOAL, BASELINE, alpha=0.0)


# --- environment -------------------------------------------------------------------------------
def test_episodes_end_only_by_the_time_limit_and_the_goal_is_absorbing():
    env = mountaincar.make_env(episode_length=200)()
    env.reset(seed=0)
    env.unwrapped.set_state(0.40, 0.07)  # fast enough to cross x = 0.45 on this step
    obs, reward, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["at_goal"] and reward == 1.0 and not terminated
    reached = obs.copy()
    assert reached[0] >= 0.45 and reached[1] == 0.0
    for t in range(2, 201):  # full throttle backwards: the car stays at the flag
        obs, reward, terminated, truncated, info = env.step(np.array([-1.0], dtype=np.float32))
        assert reward == 1.0 and info["at_goal"] and not terminated
        np.testing.assert_array_equal(obs, reached)
        assert truncated == (t == 200)


def test_success_resets_with_every_episode():
    env = mountaincar.make_env(episode_length=5)()
    env.reset(seed=0)
    env.unwrapped.set_state(0.5)
    assert env.unwrapped.at_goal
    obs, info = env.reset(seed=1)
    assert not info["at_goal"] and -0.6 <= obs[0] <= -0.4
    _, reward, _, _, info = env.step(np.array([0.0], dtype=np.float32))
    assert reward == 0.0 and not info["at_goal"]  # the authors' flag stayed set here


def test_the_car_is_drawn_where_it_is():
    env = mountaincar.CLIPMountainCarEnv(frame_size=(224, 224))
    env.reset(seed=0)
    centres = []
    for x in np.linspace(-1.1, 0.5, 9):
        env.set_state(float(x))
        frame = env.render()
        assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
        centres.append(red_columns(frame).mean())
        expected_column, _ = mountaincar.to_pixels(env, x, 0)
        assert abs(centres[-1] - expected_column) < 8, (x, centres[-1], expected_column)
    assert np.all(np.diff(centres) > 0)


def test_the_flag_is_at_the_goal():
    env = mountaincar.CLIPMountainCarEnv(frame_size=(224, 224))
    env.reset(seed=0)
    scene = mountaincar.draw_scene(env)
    yellow = (scene[..., 0] > 200) & (scene[..., 1] > 170) & (scene[..., 2] < 80)
    rows, cols = np.nonzero(yellow)
    goal_column, goal_row = mountaincar.to_pixels(env, env.goal_position, env._height(env.goal_position))
    assert len(cols) > 30
    assert goal_column - 1 <= cols.min() <= goal_column + 3  # the cloth starts at the pole
    assert rows.max() < goal_row  # and flies above the ground at the goal


def test_textured_and_plain_rendering_both_work():
    textured = mountaincar.CLIPMountainCarEnv(frame_size=(96, 128), textured=True)
    plain = mountaincar.CLIPMountainCarEnv(frame_size=(96, 128), textured=False)
    for env in (textured, plain):
        env.reset(seed=0)
        env.set_state(-0.5)
    a, b = textured.render(), plain.render()
    assert a.shape == b.shape == (96, 128, 3)
    assert (b >= 250).all(axis=-1).mean() > 0.8  # gymnasium's drawing: lines on white
    assert (a >= 250).all(axis=-1).mean() < 0.01  # the picture: sky and mountain everywhere
    colours = lambda frame: len(np.unique(frame.reshape(-1, 3), axis=0))  # noqa: E731
    assert colours(a) > 3 * colours(b)  # textured, not flat colours (b's come from antialiasing)
    textured.set_state(0.0)
    assert (textured.render() != a).any()


def test_vector_env_final_frame_is_the_state_reached():
    """At truncation the frame the loop renders shows the last state, not the first one of the next episode."""
    envs = gym.vector.SyncVectorEnv([mountaincar.make_env(3, (64, 96)) for _ in range(2)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    envs.reset(seed=0)
    for _ in range(3):
        obs, _, _, truncated, _ = envs.step(np.ones((2, 1), dtype=np.float32))
    assert truncated.all()
    frames = envs.call("render")
    reference = mountaincar.CLIPMountainCarEnv(frame_size=(64, 96))
    reference.reset(seed=0)
    for i in range(2):
        reference.set_state(float(obs[i, 0]), float(obs[i, 1]))
        np.testing.assert_array_equal(frames[i], reference.render())


# --- reward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_reward_on_mountaincar_frames_matches_the_formula(tiny_clip, alpha):
    name, _, model = tiny_clip
    tokenizer = open_clip.get_tokenizer(name)
    reward_model = mountaincar.CLIPReward(model, tokenizer, GOAL, BASELINE, alpha)
    frames, at_goal = mountaincar.landscape_frames(reward_model.image_size, np.linspace(-1.2, 0.6, 10), True)
    assert at_goal.tolist() == [False] * 9 + [True]
    cfg = open_clip.get_model_preprocess_cfg(model)
    expected = direct_reward(model, tokenizer, frames, GOAL, BASELINE, alpha, cfg["mean"], cfg["std"])
    np.testing.assert_allclose(reward_model(frames), expected, atol=2e-6)
    single = torch.cat([reward_model(frames[i: i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(reward_model(frames), single, atol=1e-6)


def test_stand_in_encoder_sees_the_car(car_position_reward):
    positions = np.linspace(-1.2, 0.6, 19)
    frames, _ = mountaincar.landscape_frames(car_position_reward.image_size, positions, True)
    np.testing.assert_allclose(car_position_reward(frames), car_position_reward.model.expected_reward(positions),
                               atol=0.12)


# --- SAC ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [True, False])
def test_actor_log_prob_matches_a_sampled_density(sde):
    """log π(a|s) of the squashed Gaussian, against a histogram of the actions it draws."""
    torch.manual_seed(0)
    actor = mountaincar.Actor(OBSERVATION_SPACE, ACTION_SPACE, 16, sde=sde, log_std_init=-1.0)
    obs = torch.tensor([[-0.5, 0.01]]).repeat(200_000, 1)
    exploration = actor.sample_exploration(len(obs)) if sde else None  # one noise draw per sample
    with torch.no_grad():
        actions, log_prob = actor(obs, exploration)
    assert actions.abs().max() <= 1
    histogram, edges = np.histogram(actions[:, 0].numpy(), bins=40, density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    density = np.interp(centres, *zip(*sorted(zip(actions[:, 0].numpy(), log_prob.exp().numpy()))))
    mass = histogram > 0.05 * histogram.max()
    np.testing.assert_allclose(density[mass], histogram[mass], rtol=0.15)


def test_gsde_noise_is_a_fixed_function_of_the_state_between_draws():
    torch.manual_seed(0)
    actor = mountaincar.Actor(OBSERVATION_SPACE, ACTION_SPACE, 16, sde=True, log_std_init=0.0)
    obs = torch.tensor([[-0.5, 0.01], [-0.3, -0.02]])
    exploration = actor.sample_exploration(2)
    with torch.no_grad():
        first, _ = actor(obs, exploration)
        again, _ = actor(obs, exploration)
        redrawn, _ = actor(obs, actor.sample_exploration(2))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, redrawn)


def test_gsde_learns_its_features_through_the_noise():
    """SB3's SAC runs gSDE with learn_features=True: the log-probability's and the noise's gradients reach the
    policy's trunk through φ(s). With the mean head zeroed, the action depends on the trunk only through the noise."""
    torch.manual_seed(0)
    actor = mountaincar.Actor(OBSERVATION_SPACE, ACTION_SPACE, 16, sde=True, log_std_init=0.0)
    torch.nn.init.zeros_(actor.mean.weight)
    torch.nn.init.zeros_(actor.mean.bias)
    actions, log_prob = actor(torch.tensor([[-0.5, 0.01], [-0.3, -0.02]]), actor.sample_exploration())
    (actions.sum() + log_prob.sum()).backward()
    trunk_grad = actor.trunk[-2].weight.grad  # the last hidden layer, φ(s)
    assert trunk_grad is not None and trunk_grad.abs().max() > 1e-3


def test_a_gradient_step_draws_one_noise_matrix_for_a_and_a_next():
    """SB3 resets gSDE's noise once per gradient step, and both a ~ π(s) (the actor's loss) and a' ~ π(s')
    (the target) use it."""
    torch.manual_seed(0)
    import types

    settings = dict(gamma=0.9, tau=0.01, hidden_size=16, sde=True, log_std_init=-1.0, learning_rate=1e-3,
                    autotune=True, ent_coef=0.1)
    agent = mountaincar.SoftActorCritic(OBSERVATION_SPACE, ACTION_SPACE, types.SimpleNamespace(**settings), "cpu")
    draws, used, forward, sample = [], [], agent.actor.forward, agent.actor.sample_exploration
    agent.actor.sample_exploration = lambda *shape: draws.append(sample(*shape)) or draws[-1]
    agent.actor.forward = lambda obs, exploration=None, deterministic=False: used.append(exploration) or forward(
        obs, exploration, deterministic)
    batch = (torch.rand(32, 2) - 0.5, torch.rand(32, 1) * 2 - 1, torch.rand(32), torch.rand(32, 2) - 0.5,
             torch.zeros(32))
    for _ in range(3):
        agent.update(*batch)
    assert len(draws) == 3 and len(used) == 6  # per step: one draw, two actor calls (a' in the target, then a)
    assert all(used[2 * i] is draws[i] and used[2 * i + 1] is draws[i] for i in range(3))
    assert draws[0].shape == agent.actor.log_std.shape  # one matrix for the whole batch


def test_gsde_redraws_at_each_rollouts_start_and_every_sde_sample_freq_steps_of_each_env(tmp_path, monkeypatch):
    """As SB3's collect_rollouts: a new matrix per env at the start of every rollout and every sde-sample-freq
    steps of each env within it. Rollouts of 10 transitions with 2 envs are 5 steps of each env: draws at
    their steps 0, 2, 4."""
    steps, draws = [0], []
    add, sample = mountaincar.ReplayBuffer.add, mountaincar.Actor.sample_exploration
    monkeypatch.setattr(mountaincar.ReplayBuffer, "add", lambda self, *a: steps.append(steps[-1] + 1) or add(self, *a))
    monkeypatch.setattr(mountaincar.Actor, "sample_exploration",
                        lambda self, *shape: draws.append((steps[-1], shape)) or sample(self, *shape))
    mountaincar.main(mountaincar.Args(reward="ground-truth", clip_model="unused", num_envs=2, total_timesteps=40,
                                      learning_starts=20, train_frequency=10, gradient_steps=1, batch_size=8,
                                      sde_sample_freq=2, episode_length=20, eval_episodes=0, output_dir=str(tmp_path)))
    rollout_draws = [step for step, shape in draws if shape == (2,)]  # the envs' matrices (updates draw shape ())
    assert rollout_draws == [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19]  # vector steps: 4 rollouts of 5
    assert sum(shape == () for _, shape in draws) == 2  # one per gradient step: after the rollouts at 30 and 40


@pytest.mark.parametrize("sde", [True, False])
def test_mean_action_draws_no_random_numbers(sde):
    """Evaluation acts with the mean action and must leave torch's random stream (training's) untouched."""
    torch.manual_seed(0)
    actor = mountaincar.Actor(OBSERVATION_SPACE, ACTION_SPACE, 16, sde=sde, log_std_init=-1.0)
    obs = torch.tensor([[-0.5, 0.01], [0.2, -0.03]])
    state = torch.get_rng_state()
    with torch.no_grad():
        mean, log_prob = actor(obs, deterministic=True)
    assert torch.equal(torch.get_rng_state(), state) and log_prob is None
    with torch.no_grad():  # the sampled actions scatter around it: tanh of the Gaussian's centre
        features = actor.trunk(obs)
        centre = actor.mean(features).clamp(-2, 2) if sde else actor.mean(features)
    torch.testing.assert_close(mean, torch.tanh(centre) * actor.action_scale + actor.action_bias)


# --- training loop -----------------------------------------------------------------------------
def test_short_run_trains_logs_and_saves(tiny_clip, tmp_path, monkeypatch, capsys):
    name, checkpoint, _ = tiny_clip
    # A goal inside the start region, so that the ground truth varies and its correlation is defined.
    reset = mountaincar.CLIPMountainCarEnv.reset

    def reset_with_a_near_goal(self, **kwargs):
        self.goal_position = -0.5
        return reset(self, **kwargs)

    monkeypatch.setattr(mountaincar.CLIPMountainCarEnv, "reset", reset_with_a_near_goal)
    args = short_args(tmp_path, clip_model=name, clip_pretrained=checkpoint, alpha=0.5, save_model=True,
                      capture_video=True, video_interval=400)
    result = mountaincar.main(args)
    report = report_args_printed(capsys.readouterr().out)  # the landscape line names the reward report of this reward
    assert (report.env, report.textured, report.clip_model, report.clip_pretrained, report.alpha) == (
        "mountaincar", True, (name,), (checkpoint,), (0.5,))
    assert (report.prompt, report.baseline_prompt) == (args.prompt, args.baseline_prompt)
    scalars = read_scalars(result["run_dir"])
    missing = (REQUIRED_KEYS - {"charts/epsilon"} | {"losses/actor_loss", "losses/ent_coef", "charts/sde_sigma"}) - set(scalars)
    assert not missing, missing
    assert len(scalars["losses/td_loss"]) == 6  # training phases at steps 320, 384, ..., 640
    for key in ("losses/td_loss", "losses/q_values", "losses/actor_loss"):
        assert all(np.isfinite(v) for _, v in scalars[key]), key
    assert len(scalars["charts/episodic_return"]) == 640 // 50 // 2 * 2
    files = os.listdir(result["run_dir"])
    assert "reward_landscape.png" in files
    assert sorted(os.listdir(os.path.join(result["run_dir"], "videos"))) == ["eval_step2.gif", "eval_step400.gif"]

    saved = torch.load(result["model_path"])
    actor = mountaincar.Actor(OBSERVATION_SPACE, ACTION_SPACE, args.hidden_size, True, args.log_std_init)
    initial = {k: v.clone() for k, v in actor.state_dict().items()}
    actor.load_state_dict(saved["actor"])
    assert any(not torch.equal(initial[k], v) for k, v in actor.state_dict().items() if "action_" not in k)


def test_stored_rewards_are_those_of_the_states_reached(car_position_reward, tmp_path, monkeypatch):
    """Every reward in the buffer equals the stand-in's reward of that transition's own next_obs."""
    buffers = capture_buffers(mountaincar, monkeypatch)
    mountaincar.main(short_args(tmp_path, total_timesteps=400, learning_starts=400, episode_length=30,
                                num_envs=3), reward_model=car_position_reward)
    rb = buffers[0]
    expected = car_position_reward.model.expected_reward(rb.next_obs[: rb.pos, 0])
    np.testing.assert_allclose(rb.rewards[: rb.pos], expected, atol=0.12)
    episode_ends = np.nonzero((np.arange(rb.pos) // 3 + 1) % 30 == 0)[0]  # last transition of each episode
    np.testing.assert_allclose(rb.rewards[episode_ends], expected[episode_ends], atol=0.12)


def test_ground_truth_reward_loads_no_clip(tmp_path, monkeypatch):
    monkeypatch.setattr(mountaincar, "load_clip_reward", lambda *a: pytest.fail("a CLIP model was loaded"))
    buffers = capture_buffers(mountaincar, monkeypatch)
    result = mountaincar.main(short_args(tmp_path, reward="ground-truth", clip_model="no-such-model",
                                         total_timesteps=400))
    rb = buffers[0]
    np.testing.assert_array_equal(rb.rewards[: rb.pos], (rb.next_obs[: rb.pos, 0] >= 0.45).astype(np.float32))
    scalars = read_scalars(result["run_dir"])
    assert "charts/episodic_clip_return" not in scalars and "losses/td_loss" in scalars


@pytest.mark.slow  # 25k gradient steps (one per transition, the paper's ratio): ~3 minutes on one CPU core
def test_agent_learns_to_reach_the_flag_from_pixels(tmp_path):
    """End to end: render -> stand-in encoder -> CLIP reward formula -> SAC with gSDE; no ground truth.

    The stand-in's reward is -1 in the valley and rises to 1 over the last 0.45 of the track before
    the flag (span 0.45): like the ground truth, it does not pay for the first swing away from the
    goal, so exploration has to find the way. The script's defaults except: batches of 128 (faster
    steps) and gSDE's log σ_W starting at -1 instead of RL-zoo's -3.67 (the first success came at
    ~5k steps instead of ~20k). Seeds 1 and 2: 9 of the last 10 episodes at the flag by 14k / 18k
    steps, every greedy episode at 30k. With -3.67 and 30k steps, seed 1 learned and seed 2 never
    reached the flag.
    """
    encoder = CarPositionEncoder(size=(96, 128), span=0.45)
    reward_model = mountaincar.CLIPReward(encoder, encoder.tokenizer, GOAL, BASELINE, alpha=0.0)
    args = mountaincar.Args(clip_model="unused", total_timesteps=25_000, batch_size=128, log_std_init=-1.0,
                            eval_episodes=10, landscape_points=9, clip_precision="fp32", output_dir=str(tmp_path),
                            seed=1)
    result = mountaincar.main(args, reward_model=reward_model)
    assert result["eval_success_rate"] >= 0.8, result
