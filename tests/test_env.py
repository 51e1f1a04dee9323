"""The paper's CartPole: episode semantics, ground truth, rendering, and frame/transition alignment."""

import gymnasium as gym
import numpy as np
import pytest

from conftest import PoleTiltEncoder, cartpole


def test_episodes_end_only_by_the_time_limit():
    env = cartpole.make_env(episode_length=200)()
    obs, _ = env.reset(seed=0)
    terminated_any, truncated_at, upright = False, None, []
    for t in range(1, 201):
        obs, reward, terminated, truncated, info = env.step(1)  # always push right: the pole falls
        terminated_any |= terminated
        upright.append(info["upright"])
        assert reward == float(info["upright"])
        assert -np.pi <= obs[2] < np.pi and abs(obs[0]) <= 2.4
        if truncated:
            truncated_at = t
            break
    assert not terminated_any and truncated_at == 200
    assert upright[0] and not upright[-1]  # it fell, and the episode went on


def test_ground_truth_upright_band():
    env = cartpole.CLIPCartPoleEnv()
    for theta, x, expected in [(0.0, 0.0, True), (0.2, 0.0, True), (-0.2, 1.0, True), (0.22, 0.0, False),
                               (-0.22, 0.0, False), (np.pi - 0.01, 0.0, False), (0.0, 2.4, True), (0.0, -2.4, True)]:
        env.set_state(x=x, theta=theta)
        assert env.is_upright() == expected, (theta, x)


def drive_into_the_right_wall(env):
    """From 2.3 m at 2 m/s, push right until the cart has hit the wall; returns the state just before the hit."""
    env.reset(seed=0)
    env.set_state(x=2.3, x_dot=2.0, theta=0.05)
    while True:
        before = env.state.copy()
        env.step(1)
        if env.state[0] == 2.4:
            return before


def test_the_wall_stops_the_cart_and_passes_its_momentum_to_the_pole():
    """An inelastic hit: the cart stops at x = 2.4, and the pole's angular momentum about the (now fixed)
    pivot is conserved: θ' jumps by 3 cos θ v / 4l, so a cart hitting the wall tips its pole over."""
    env = cartpole.CLIPCartPoleEnv()
    x, x_dot, theta, theta_dot = drive_into_the_right_wall(env)
    l = env.length
    assert env.state[1] == 0.0 and x_dot > 2.0
    # θ' after this step is θ' + τ θ'' + the impulse of the velocity at the hit (this step's Euler update of
    # the pre-hit velocity); τ θ'' (~ -0.3) and that update (~ +0.15 m/s) are small beside it.
    impulse = 3 * np.cos(env.state[2]) * x_dot / (4 * l)
    assert impulse > 2 and 0.9 * impulse < env.state[3] - theta_dot < 1.2 * impulse  # ~3.6 rad/s from ~2.4 m/s


def test_the_cart_drives_away_from_the_wall_when_pushed_away():
    """Thirty pushes away from the wall carry the cart away (the old clip zeroed its velocity every step)."""
    env = cartpole.CLIPCartPoleEnv()
    drive_into_the_right_wall(env)
    positions = []
    for _ in range(30):
        obs, *_ = env.step(0)
        positions.append(obs[0])
    assert positions[0] == np.float32(2.4)  # Euler: the first push gives velocity, the next steps move it
    assert np.all(np.diff(positions) < 0) and positions[-1] < 1.5 and obs[1] < -1.0


def test_a_cart_held_at_the_wall_leaves_the_pole_swinging_about_a_fixed_pivot():
    """Pushed into the wall, the cart stays at x = 2.4 at rest, and the pole follows the pendulum on a fixed
    pivot, θ'' = 3 g sin θ / 4l, not gymnasium's free-cart equation (which would accelerate the cart)."""
    env = cartpole.CLIPCartPoleEnv()
    env.reset(seed=0)
    env.set_state(x=2.4, theta=0.1)
    g, l, tau = env.gravity, env.length, env.tau
    for _ in range(30):
        theta, theta_dot = env.state[2], env.state[3]
        obs, *_ = env.step(1)
        assert obs[0] == np.float32(2.4) and obs[1] == 0.0
        assert (env.state[3] - theta_dot) / tau == pytest.approx(3 * g * np.sin(theta) / (4 * l), rel=1e-6)
    assert env.state[2] > 0.4  # it fell towards the wall over the 30 steps (0.6 s)
    # gymnasium's free cart pushed right at θ = 0.1 would give θ'' ≈ -13 rad/s², not +1.5.
    free = cartpole.CLIPCartPoleEnv()
    free.reset(seed=0)
    free.set_state(x=0.0, theta=0.1)
    free.step(1)
    assert free.state[3] / tau < -10


def test_a_cart_moving_away_from_the_wall_is_not_held():
    """At x = 2.4 but already moving inwards, a push towards the wall only slows the cart: free equations."""
    env, free = cartpole.CLIPCartPoleEnv(), cartpole.CLIPCartPoleEnv()
    for e in (env, free):
        e.reset(seed=0)
    env.set_state(x=2.4, x_dot=-0.2, theta=0.05, theta_dot=0.3)
    free.set_state(x=0.0, x_dot=-0.2, theta=0.05, theta_dot=0.3)  # the same state away from any wall
    env.step(1)
    free.step(1)
    np.testing.assert_allclose(env.state[1:], free.state[1:], rtol=1e-12)
    assert env.state[0] < 2.4


def test_the_angle_wraps():
    env = cartpole.CLIPCartPoleEnv()
    env.reset(seed=0)
    env.set_state(theta=np.pi - 0.001, theta_dot=2.0)
    obs, *_ = env.step(0)
    assert -np.pi <= obs[2] < -np.pi + 0.1  # went over the bottom and wrapped


def test_frames_are_rendered_at_the_requested_size_and_show_the_pole_angle():
    env = cartpole.CLIPCartPoleEnv(frame_size=(96, 80))
    env.set_state(theta=0.0)
    upright = env.render()
    env.set_state(theta=1.0)
    tilted = env.render()
    assert upright.shape == (96, 80, 3) and upright.dtype == np.uint8
    assert (upright != tilted).any()
    pole = lambda frame: (np.abs(frame.astype(int) - (202, 152, 101)).sum(-1) < 30)  # noqa: E731
    cols_up, cols_tilt = np.nonzero(pole(upright))[1], np.nonzero(pole(tilted))[1]
    assert cols_up.max() - cols_up.min() < cols_tilt.max() - cols_tilt.min()  # leaning widens it
    assert cols_tilt.mean() > cols_up.mean()  # positive angle leans right, as in gymnasium


def test_vector_env_frame_is_the_state_reached_also_at_the_end_of_an_episode():
    """The training loop renders the vector env right after its step (autoreset off): every frame is the state
    that step reached, the last frame of an episode included, never the next episode's first."""
    envs = gym.vector.SyncVectorEnv([cartpole.make_env(10, (64, 64)) for _ in range(2)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    reference = cartpole.CLIPCartPoleEnv(frame_size=(64, 64))
    envs.reset(seed=0)
    for t in range(10):
        next_obs, _, _, truncations, _ = envs.step(np.ones(2, dtype=np.int64))
        frames = np.stack(envs.call("render"))
        for i in range(2):
            reference.set_state(*next_obs[i].astype(np.float64))
            assert (frames[i] != reference.render()).mean() < 0.01  # up to float32 rounding of obs
    assert truncations.all()
    reset_obs, _ = envs.reset(options={"reset_mask": truncations})
    assert np.abs(reset_obs[:, 2]).max() <= 0.05 < np.abs(next_obs[:, 2]).min()  # a new episode
    assert not np.array_equal(np.stack(envs.call("render"))[0], frames[0])


def test_stand_in_encoder_reads_the_pole(pole_tilt_reward):
    angles = np.linspace(-np.pi + 0.2, np.pi - 0.2, 25)
    frames, _ = cartpole.landscape_frames(pole_tilt_reward.image_size, angles)
    rewards = pole_tilt_reward(frames)
    np.testing.assert_allclose(rewards, PoleTiltEncoder.expected_reward(angles), atol=0.3)  # pixel-level tilt
    assert rewards[np.abs(angles) < 0.1].min() > 0.9 and rewards[np.abs(angles) > 0.9].max() < -0.9
