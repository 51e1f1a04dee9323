"""The update rules and their schedules: bootstrapping, entropy tuning, target networks, updates per
transition, rewards in place before sampling, and the same run from the same seed."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import capture_buffers, cartpole, humanoid, mountaincar, needs_gl, read_scalars

OBSERVATION_SPACE = mountaincar.CLIPMountainCarEnv().observation_space
ACTION_SPACE = mountaincar.CLIPMountainCarEnv().action_space


def sac_agent(**overrides):
    settings = dict(gamma=0.9, tau=0.01, hidden_size=16, sde=False, log_std_init=-3.0, learning_rate=1e-2,
                    autotune=True, ent_coef=0.1)
    settings.update(overrides)
    return mountaincar.SoftActorCritic(OBSERVATION_SPACE, ACTION_SPACE, types.SimpleNamespace(**settings), "cpu")


def dqn_td_loss(batch, gamma: float):
    """dqn_update's loss on `batch` with untrained networks whose max Q_target is ≈ 10 (so that bootstrapping
    shows) and a learning rate of 0; also γ max Q_target(s'), and the Huber loss of Q(s, a) against any target."""
    obs, actions, rewards, next_obs, terminations = batch
    torch.manual_seed(0)
    q_network, target_network = cartpole.QNetwork(4, 2, 16), cartpole.QNetwork(4, 2, 16)
    torch.nn.init.constant_(target_network.network[-1].bias, 10.0)
    with torch.no_grad():
        q_taken = q_network(obs).gather(1, actions[:, None]).squeeze(1)
        bootstrap = gamma * target_network(next_obs).max(dim=1).values
    optimizer = torch.optim.SGD(q_network.parameters(), lr=0.0)
    td_loss = cartpole.dqn_update(q_network, target_network, optimizer, batch, gamma, max_grad_norm=10.0)["td_loss"]
    return td_loss, bootstrap, lambda target: F.smooth_l1_loss(q_taken, target).item()


def test_dqn_target_bootstraps_a_truncation_not_a_termination():
    """Row 0 ends in a terminal state (no bootstrap); row 1 was cut by the time limit (bootstrapped)."""
    torch.manual_seed(1)
    obs, next_obs = torch.randn(2, 4), torch.randn(2, 4)
    actions, rewards, terminations = torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    td_loss, bootstrap, loss = dqn_td_loss((obs, actions, rewards, next_obs, terminations), gamma=0.99)
    assert td_loss == pytest.approx(loss(rewards + torch.tensor([0.0, 1.0]) * bootstrap), rel=1e-6)
    assert abs(td_loss - loss(rewards + bootstrap)) > 1  # bootstrapping the terminal row: off by ~5
    assert abs(td_loss - loss(rewards)) > 1  # not bootstrapping the truncated row: off by ~5


def test_sac_target_bootstraps_a_truncation_not_a_termination():
    torch.manual_seed(0)
    agent = sac_agent(autotune=False)
    for critic in (agent.qf1_target, agent.qf2_target):
        torch.nn.init.constant_(critic.network[-1].bias, 10.0)  # soft Q ≈ 10: bootstrapping shows
    next_obs = torch.tensor([[-0.5, 0.01], [0.1, -0.02]])
    rewards, terminations = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    torch.manual_seed(1)
    target = agent.td_target(rewards, next_obs, terminations)
    torch.manual_seed(1)  # the same a' ~ π(s')
    with torch.no_grad():
        next_actions, next_log_pi = agent.actor(next_obs)
        soft_q = torch.min(agent.qf1_target(next_obs, next_actions), agent.qf2_target(next_obs, next_actions)) \
            - 0.1 * next_log_pi
    assert target[0].item() == 1.0  # terminal: the reward alone
    assert target[1].item() == pytest.approx(1.0 + 0.9 * soft_q[1].item(), rel=1e-6)
    assert soft_q[1].item() > 5  # so that a missing bootstrap would show


EPISODE_END_RUNS = {  # short runs in which every env ends several 30-step episodes, all by the time limit
    cartpole: dict(reward="ground-truth"),
    mountaincar: dict(reward="ground-truth", batch_size=16),
    humanoid: dict(reward="pose", task="standing-up", batch_size=16, hidden_size=16, video_interval=10**9,
                   fast_render=True),  # on a CPU, shadows would make rendering most of the test's time
}


@pytest.mark.parametrize("bootstrap", [False, True], ids=["paper", "bootstrap-time-limit"])
@pytest.mark.parametrize("module", [cartpole, mountaincar, pytest.param(humanoid, marks=needs_gl)],
                         ids=["cartpole", "mountaincar", "humanoid"])
def test_time_limit_end_is_terminal_as_in_the_paper_unless_bootstrapped(module, bootstrap, tmp_path, monkeypatch):
    """The paper's envs set terminated=True at an episode's last step, so SB3 stored it as terminal: by default
    exactly the last transition of every episode is stored terminal, and its TD target is the reward alone.
    --bootstrap-time-limit stores none as terminal, and the same transitions bootstrap from their next state."""
    args = gt_args(module, tmp_path, **EPISODE_END_RUNS[module], bootstrap_time_limit=bootstrap, num_envs=2,
                   episode_length=30, total_timesteps=240, learning_starts=120, train_frequency=60, gradient_steps=2)
    buffers = capture_buffers(module, monkeypatch)
    module.main(args)
    rb = buffers[0]
    last = (np.arange(rb.pos) // args.num_envs) % args.episode_length == args.episode_length - 1
    assert rb.pos == 240 and last.sum() == 8  # 4 episodes of each env, stored step by step
    np.testing.assert_array_equal(rb.terminations[: rb.pos], 0.0 if bootstrap else last)

    slots = np.flatnonzero(last)
    obs, actions, rewards, next_obs, terminations = (torch.as_tensor(a[slots]) for a in (
        rb.obs, rb.actions, rb.rewards, rb.next_obs, rb.terminations))
    torch.manual_seed(0)
    if module is cartpole:
        td_loss, discounted_next_q, loss = dqn_td_loss((obs, actions, rewards, next_obs, terminations), args.gamma)
        bootstrapped = rewards + discounted_next_q
        assert td_loss == pytest.approx(loss(bootstrapped if bootstrap else rewards), rel=1e-6)
        assert abs(loss(rewards) - loss(bootstrapped)) > 5
    else:
        envs_space = module.make_env(args.episode_length)()
        agent = module.SoftActorCritic(envs_space.observation_space, envs_space.action_space, args, "cpu")
        for critic in (agent.qf1_target, agent.qf2_target):
            torch.nn.init.constant_(critic.network[-1].bias, 10.0)  # Q' ≈ 10: bootstrapping shows
        agent.ent_coef = 0.0  # the target is then r + γ min Q'(s', a'), free of the policy's log-density
        target = agent.td_target(rewards, next_obs, terminations)
        if bootstrap:
            assert (target - rewards).min() > 5
        else:
            torch.testing.assert_close(target, rewards)


def test_observations_scaled_to_unit_where_bounded_and_passed_unchanged_where_not():
    """MountainCar's observations are bounded: each maps from its bounds to [-1, 1] (the velocity, ±0.07, as
    visible as the position). The humanoid's are all unbounded and pass as they are (the same tensor: no
    arithmetic spent on them)."""
    scale = mountaincar.ScaleToUnit(OBSERVATION_SPACE)
    low, high = OBSERVATION_SPACE.low, OBSERVATION_SPACE.high
    obs = torch.tensor([[low[0], high[1]], [high[0], low[1]], [(low[0] + high[0]) / 2, 0.035]])
    torch.testing.assert_close(scale(obs), torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.5]]))
    humanoid_space = humanoid.make_env(10)().observation_space
    obs = torch.randn(4, humanoid_space.shape[0])
    assert humanoid.ScaleToUnit(humanoid_space)(obs) is obs


# log σ = -5 + 3.5 (tanh(bias) + 1): bias -6 gives σ = e^-5, a near-deterministic policy (entropy far below
# the target -1); bias 0.458 gives σ = 1, which spreads tanh(u) over [-1, 1] (entropy ≈ 0.4, above it).
@pytest.mark.parametrize("log_std_bias, rises", [(-6.0, True), (0.458, False)])
def test_entropy_coefficient_rises_when_entropy_is_below_target(log_std_bias, rises):
    """SAC's α follows the entropy: raised while the policy is more certain than the target -|A|, lowered
    while it is less certain."""
    torch.manual_seed(0)
    agent = sac_agent()
    torch.nn.init.zeros_(agent.actor.log_std.weight)
    torch.nn.init.constant_(agent.actor.log_std.bias, log_std_bias)
    batch = (torch.rand(64, 2) - 0.5, torch.rand(64, 1) * 2 - 1, torch.zeros(64), torch.rand(64, 2) - 0.5,
             torch.zeros(64))
    for _ in range(5):
        agent.update(*batch)
    assert (agent.ent_coef > 1.0) == rises and agent.ent_coef != 1.0


def test_sac_target_critics_move_by_tau_after_each_gradient_step():
    torch.manual_seed(0)
    agent = sac_agent(tau=0.25)
    before = [p.clone() for p in agent.qf1_target.parameters()]
    batch = (torch.rand(32, 2) - 0.5, torch.rand(32, 1) * 2 - 1, torch.rand(32), torch.rand(32, 2) - 0.5,
             torch.zeros(32))
    agent.update(*batch)
    for old, online, target in zip(before, agent.qf1.parameters(), agent.qf1_target.parameters()):
        torch.testing.assert_close(target, 0.75 * old + 0.25 * online)
        assert not torch.equal(target, old)


def gt_args(module, tmp_path, **overrides):
    settings = dict(reward="ground-truth", clip_model="unused", eval_episodes=0, output_dir=str(tmp_path), seed=1)
    settings.update(overrides)
    return module.Args(**settings)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_dqn_target_network_follows_its_schedule(tmp_path, monkeypatch, num_envs):
    """A Polyak step every `target-network-frequency` transitions, however many envs step at once, each
    made as soon as the step count passes a multiple of it."""
    steps_taken, calls = [0], []
    add, polyak_update = cartpole.ReplayBuffer.add, cartpole.polyak_update  # one add per vector step
    monkeypatch.setattr(cartpole.ReplayBuffer, "add", lambda self, *a: steps_taken.append(steps_taken[-1] + num_envs)
                        or add(self, *a))
    monkeypatch.setattr(cartpole, "polyak_update", lambda *a: calls.append((steps_taken[-1], a[2])) or polyak_update(*a))
    result = cartpole.main(gt_args(cartpole, tmp_path, num_envs=num_envs, total_timesteps=240, learning_starts=120,
                                   train_frequency=60, gradient_steps=3, target_network_frequency=8, tau=0.3))
    assert len(calls) == result["target_updates_done"] == 240 // 8 and {tau for _, tau in calls} == {0.3}
    # The k-th update comes at the first step count >= 8 k: with 3 envs, e.g. two at step 48 (passing 40 and 48).
    expected = [next(step for step in steps_taken if step >= 8 * k) for k in range(1, 31)]
    assert [step for step, _ in calls] == expected


@pytest.mark.parametrize("module, flags, updates_per_transition, num_envs", [
    (cartpole, dict(), 200 / 1600, 1), (cartpole, dict(), 200 / 1600, 4),
    (mountaincar, dict(batch_size=32), 1.0, 1), (mountaincar, dict(batch_size=32), 1.0, 4),
    (humanoid, dict(batch_size=32, hidden_size=32, fast_render=True), 100 / 3200, 1),  # counted as MountainCar's: 1 env
])
def test_updates_per_transition_are_the_papers_for_any_num_envs(tmp_path, module, flags, updates_per_transition,
                                                                num_envs):
    """The default gradient-steps / train-frequency, counted in transitions: the paper's ratio (CartPole 1/8,
    MountainCar 1, Humanoid 1/32), with 1 env or 4."""
    defaults = module.Args()
    assert defaults.gradient_steps / defaults.train_frequency == updates_per_transition
    total = defaults.train_frequency
    result = module.main(gt_args(module, tmp_path, num_envs=num_envs, total_timesteps=total, learning_starts=0,
                                 **flags))
    assert result["global_step"] == total
    assert result["gradient_steps_done"] == total * updates_per_transition


def test_training_phases_come_when_sb3s_would(tmp_path):
    """SB3 trains when a rollout of train-frequency steps ends after learning starts: here at every multiple
    of train-frequency past learning-starts (300, 400, 500), each with gradient-steps updates."""
    result = cartpole.main(gt_args(cartpole, tmp_path, num_envs=4, total_timesteps=560, learning_starts=250,
                                   train_frequency=100, gradient_steps=7))
    assert [step for step, _ in read_scalars(result["run_dir"])["losses/td_loss"]] == [300, 400, 500]
    assert result["gradient_steps_done"] == 21


def test_every_numeric_flag_has_a_range():
    """A new numeric flag without an entry in RANGES would go unchecked."""
    import dataclasses

    for module in (cartpole, mountaincar, humanoid):
        numeric = {field.name for field in dataclasses.fields(module.Args)
                   if field.type in (int, float, "int", "float") and field.name != "seed"}
        assert numeric == set(module.RANGES), (module.__name__, numeric ^ set(module.RANGES))


def test_rewards_are_in_the_buffer_before_any_sample(pole_tilt_reward, tmp_path, monkeypatch):
    """Rewards arrive from CLIP later than their transitions; no training phase may sample before they do
    (an unscored reward is NaN in the buffer)."""
    sampled = []
    sample = cartpole.ReplayBuffer.sample

    def checked_sample(self, batch_size):
        stored = self.size if self.full else self.pos
        sampled.append(bool(np.isfinite(self.rewards[:stored]).all()))
        return sample(self, batch_size)

    monkeypatch.setattr(cartpole.ReplayBuffer, "sample", checked_sample)
    buffers = capture_buffers(cartpole, monkeypatch)
    args = cartpole.Args(clip_model="unused", total_timesteps=300, learning_starts=100, train_frequency=50,
                         gradient_steps=2, episode_length=40, num_envs=2, eval_episodes=0, landscape_points=5,
                         buffer_size=130,  # the ring wraps
                         output_dir=str(tmp_path))
    cartpole.main(args, reward_model=pole_tilt_reward)
    rb = buffers[0]
    assert len(sampled) == 8 and all(sampled) and rb.full
    # After the ring wrapped, each slot holds the reward of the transition that holds it now: CLIP's reward of
    # the frame of that transition's next state, drawn again here.
    env = cartpole.CLIPCartPoleEnv(pole_tilt_reward.image_size)
    frames = []
    for next_obs in rb.next_obs:
        env.set_state(*next_obs)
        frames.append(env.render())
    np.testing.assert_allclose(rb.rewards, pole_tilt_reward(np.stack(frames)).numpy(), atol=1e-6)


def curves(result):
    scalars = read_scalars(result["run_dir"])
    return {key: [v for _, v in scalars[key]] for key in ("losses/td_loss", "charts/episodic_return")}


@pytest.mark.parametrize("module, flags", [
    (cartpole, dict(num_envs=2, total_timesteps=600, learning_starts=200, train_frequency=100, gradient_steps=10,
                    episode_length=50)),
    (mountaincar, dict(num_envs=2, total_timesteps=400, learning_starts=100, train_frequency=32, gradient_steps=8,
                       batch_size=32, episode_length=50)),
    pytest.param(humanoid, dict(num_envs=2, total_timesteps=300, learning_starts=100, train_frequency=50,
                                gradient_steps=4, batch_size=32, hidden_size=32, episode_length=50, fast_render=True),
                 marks=needs_gl),
])
def test_same_seed_same_run_with_or_without_evaluations_on_the_way(tmp_path, module, flags):
    """Two CPU runs with one seed give the same losses and returns, also when one of them stops for
    evaluation episodes (videos, image strips) on the way: evaluation must not touch training's random streams."""
    plain = module.main(gt_args(module, tmp_path / "a", eval_episodes=1, **flags))
    watched = module.main(gt_args(module, tmp_path / "b", eval_episodes=1, capture_video=True, video_interval=200,
                                  **flags))
    assert curves(plain) == curves(watched)
    assert len(curves(plain)["losses/td_loss"]) >= 3 and len(curves(plain)["charts/episodic_return"]) >= 4


def test_epsilon_must_decay(tmp_path):
    with pytest.raises(SystemExit, match="--end-e"):
        cartpole.main(gt_args(cartpole, tmp_path, start_e=0.1, end_e=0.5))
