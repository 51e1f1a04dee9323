"""sac_clip_humanoid.py's ground truth: pose detectors for the paper's eight tasks, judged against poses
built by hand (benchmarks/pose_contact_sheet.py's POSES, each named by what a person sees in it), the
graded pose score, the in-pose reward and success statistics of CLIP and pose runs, and `--task`."""

import importlib.util
import json
import os
import typing

import numpy as np
import pytest
import tyro

from conftest import ROOT, needs_gl, capture_buffers, humanoid, read_scalars

spec = importlib.util.spec_from_file_location("pose_contact_sheet", os.path.join(ROOT, "benchmarks", "pose_contact_sheet.py"))
contact_sheet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(contact_sheet)
POSES = contact_sheet.POSES


# The paper's goal prompts (Table 3), typed here from DESIGN.md: `--task` must give exactly these.
PAPER_PROMPTS = {
    "kneeling": "a humanoid robot kneeling",
    "lotus-position": "a humanoid robot seated down, meditating in the lotus position",
    "standing-up": "a humanoid robot standing up",
    "arms-raised": "a humanoid robot standing up, with both arms raised",
    "doing-splits": "a humanoid robot practicing gymnastics, doing the side splits",
    "hands-on-hips": "a humanoid robot standing up with hands on hips",
    "arms-crossed": "a humanoid robot standing up, with its arms crossed",
    "standing-on-one-leg": "a humanoid robot standing up on one leg",
}


@pytest.fixture(scope="module")
def env():
    return humanoid.CLIPHumanoidEnv(frame_size=(64, 64))  # simulation only: nothing is rendered here


def features_of(env, joints, pitch=0.0):
    humanoid.set_pose(env, joints, pitch)
    return humanoid.pose_features(env.data)


@pytest.mark.parametrize("name", POSES)
def test_hand_built_pose_is_judged_as_a_person_judges_it(env, name):
    """Every detector says what a person says of the pose: e.g. arms raised is "arms raised" and "standing up",
    and nothing else; lying on its back is none of the eight."""
    pose = POSES[name]
    features = features_of(env, pose.joints, pose.pitch)
    assert abs(humanoid.lowest_point(env.model, env.data)) < 1e-9  # resting on the floor, not floating
    judged = {task for task in humanoid.TASKS if humanoid.in_pose(features, task)}
    assert judged == pose.person, {f: round(v, 3) for f, v in features.items()}


def test_every_task_has_hand_built_poses_in_it_and_out_of_it():
    """So that no detector passes the test above by always saying yes, or always no."""
    for task in humanoid.TASKS:
        assert any(task in pose.person for pose in POSES.values()), task
        assert any(task not in pose.person for pose in POSES.values()), task


def test_tasks_are_the_papers_eight_with_its_prompts():
    assert set(humanoid.TASKS) == set(typing.get_args(humanoid.TaskName)) == set(PAPER_PROMPTS)
    for name, prompt in PAPER_PROMPTS.items():
        assert humanoid.TASKS[name].prompt == prompt
        assert humanoid.goal_prompts(tyro.cli(humanoid.Args, args=["--task", name])) == (prompt,)
    assert humanoid.goal_prompts(tyro.cli(humanoid.Args, args=[])) == (PAPER_PROMPTS["kneeling"],)  # the default task
    # A prompt of the user's own is kept; --task then only names the detector that judges it.
    args = tyro.cli(humanoid.Args, args=["--task", "arms-raised", "--prompt", "a robot cheering"])
    assert humanoid.goal_prompts(args) == ("a robot cheering",) and args.task == "arms-raised"


def test_unknown_task_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        tyro.cli(humanoid.Args, args=["--task", "dancing"])
    assert stop.value.code != 0 and "dancing" in capsys.readouterr().err


def test_pose_score_puts_every_state_in_the_pose_above_every_state_out_of_it(env):
    """The in-pose flag is half the score: 0.9-1 in the pose (the graded half is at least 0.8 there), below 0.5
    out of it. A bug that dropped the flag, or let the graded half reach 1 at the boundary, fails here."""
    for pose in POSES.values():
        features = features_of(env, pose.joints, pose.pitch)
        for task in humanoid.TASKS:
            score = humanoid.pose_score(features, task)
            assert (0.9 <= score <= 1.0) if humanoid.in_pose(features, task) else (0.0 <= score < 0.5), (task, score)


def test_pose_score_grades_each_condition_from_a_margin_outside_to_a_quarter_margin_inside(env):
    """One feature of an otherwise deep kneeling pose, moved relative to its threshold by a fraction of its margin
    (negative: inside), costs its condition's share of the graded half: (1 - (1 + f) / 1.25) / 3 / 2, from 0 at
    a quarter margin inside to a whole share a margin outside, plus the flag's half once outside."""
    features = features_of(env, POSES["kneeling upright"].joints)
    conditions = humanoid.TASKS["kneeling"].conditions
    feature, op, threshold, margin = conditions[0]
    assert (feature, op) == ("knee_low", "<")
    deep = {**features}
    for name, op_, t, m in conditions:  # every condition a whole margin inside: the graded half is full
        deep[name] = t - m if op_ == "<" else t + m
    assert humanoid.pose_score(deep, "kneeling") == 1.0
    for fraction, expected in ((-1.0, 1.0), (-0.25, 1.0), (-0.1, 1 - 0.15 / 1.25 / 6), (0.0, 1 - 0.25 / 1.25 / 6),
                               (0.5, 0.5 - 0.75 / 1.25 / 6), (1.0, 0.5 - 1 / 6), (3.0, 0.5 - 1 / 6)):
        moved = {**deep, feature: threshold + fraction * margin}  # "<": a larger knee_low is further out
        assert humanoid.pose_score(moved, "kneeling") == pytest.approx(expected), fraction


@pytest.mark.parametrize("task", humanoid.TASKS)
def test_pose_score_rises_on_the_landscape_path_into_the_pose(env, task):
    """On the reward landscape's path (joint angles in equal steps from standing, or a squat, to the task's
    hand-built pose) the score never falls and ends in the pose's band (a reward that says "closer"), while the
    detector says no at the start and yes at the end: the landscape has a region in the pose and one out."""
    scores, flags = [], []
    for fraction in np.linspace(0, 1, 6):
        features = features_of(env, *humanoid.path_pose(task, fraction))
        scores.append(humanoid.pose_score(features, task))
        flags.append(humanoid.in_pose(features, task))
    assert np.all(np.diff(scores) >= 0) and scores[0] < 0.45 and scores[-1] >= 0.9, scores
    assert not flags[0] and flags[-1]


@needs_gl
def test_reward_landscape_frames_show_the_path_and_are_judged_by_the_detector():
    fractions, frames, flags = humanoid.landscape_frames("arms-raised", (48, 40), True, "paper", points=5)
    assert fractions.tolist() == [0, 0.25, 0.5, 0.75, 1.0] and frames.shape == (5, 48, 40, 3)
    assert flags.tolist() == [False, False, False, True, True]  # the hands pass the head 3/4 of the way
    # The frames change along the path (the arms rise), and the first is the standing robot of the start pose.
    assert np.abs(frames[-1].astype(int) - frames[0]).sum() > 0
    env = humanoid.CLIPHumanoidEnv((48, 40))
    humanoid.set_pose(env, {})
    assert np.array_equal(env.render(), frames[0])


def test_env_reward_is_the_in_pose_flag_of_the_state_reached():
    """With a task, the environment's reward is 1 in the pose and 0 out of it, for the state each step reached:
    left without torques, the robot stands at first, then collapses."""
    env = humanoid.make_env(episode_length=100, task="standing-up")()
    env.reset(seed=0)
    rewards = []
    for _ in range(100):
        _, reward, terminated, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        features = humanoid.pose_features(env.unwrapped.data)
        assert reward == float(info["in_pose"]) == float(humanoid.in_pose(features, "standing-up"))
        assert info["pose_score"] == humanoid.pose_score(features, "standing-up")
        assert not terminated
        rewards.append(reward)
    assert rewards[:10] == [1.0] * 10 and rewards[-10:] == [0.0] * 10
    # Without a task the reward is gymnasium's (walking: healthy reward + progress - costs), not a flag.
    env = humanoid.make_env(episode_length=100)()
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert reward not in (0.0, 1.0) and "in_pose" not in info


def episodes_by_step(scalars, tag):
    """{step: sorted values} of a chart logged once per episode (several episodes can end at one step)."""
    by_step = {}
    for step, value in scalars[tag]:
        by_step.setdefault(step, []).append(value)
    return {step: sorted(values) for step, values in by_step.items()}


def test_pose_reward_run_trains_on_the_pose_score_and_logs_success(tmp_path, monkeypatch):
    """`--reward pose`: every stored reward is the pose score of the state its transition reached (replaying the
    stored actions in fresh environments with the same seeds gives them back), while the statistics count the
    steps in the pose: the paper's success is at least half of an episode's steps in the pose."""
    args = humanoid.Args(baseline_episodes=1, reward="pose", task="standing-up", num_envs=2, episode_length=40, total_timesteps=400,
                         learning_starts=100, train_frequency=100, gradient_steps=4, batch_size=32, hidden_size=32,
                         eval_episodes=1, video_interval=10**9, output_dir=str(tmp_path), fast_render=True)
    buffers = capture_buffers(humanoid, monkeypatch)
    result = humanoid.main(args)
    rb = buffers[0]
    steps_in_pose = []
    for i in range(args.num_envs):  # transitions are stored step by step, env 0 then env 1
        env = humanoid.make_env(args.episode_length, task=args.task)()
        env.reset(seed=args.seed + i)
        scores, in_pose = [], 0
        for action in rb.actions[i: rb.pos: args.num_envs]:
            _, reward, terminated, truncated, info = env.step(action)
            scores.append(info["pose_score"])
            in_pose += reward
            assert not terminated  # no termination: a fall is part of the episode
            if truncated:
                env.reset()
                steps_in_pose.append(in_pose)
                in_pose = 0
        stored = rb.rewards[i: rb.pos: args.num_envs]
        np.testing.assert_allclose(stored, scores, rtol=1e-6)
        assert not np.isin(stored, [0.0, 1.0]).all()  # graded scores, not the in-pose flags
    episode_ends = (np.arange(rb.pos) // args.num_envs) % args.episode_length == args.episode_length - 1
    np.testing.assert_array_equal(rb.terminations[: rb.pos], episode_ends)  # the time limit only, as the paper

    scalars = read_scalars(result["run_dir"])
    expected = {"charts/episodic_return", "charts/success_rate", "charts/pose_fraction", "eval/success_rate",
                "eval/pose_fraction", "losses/td_loss"}
    assert expected <= set(scalars), expected - set(scalars)
    assert "charts/episodic_clip_return" not in scalars and "eval/clip_return" not in scalars  # no CLIP here
    returns = episodes_by_step(scalars, "charts/episodic_return")
    fractions = episodes_by_step(scalars, "charts/pose_fraction")
    successes = episodes_by_step(scalars, "charts/success_rate")
    assert sorted(v for values in returns.values() for v in values) == sorted(steps_in_pose)
    assert len(steps_in_pose) == 400 // 40 and 0 < sum(steps_in_pose) < 400  # the robot stands, then falls
    for step in returns:
        np.testing.assert_allclose(fractions[step], np.array(returns[step]) / 40)
        assert successes[step] == sorted(float(f >= 0.5) for f in fractions[step])
    logged_successes = [v for _, v in scalars["charts/success_rate"]]
    assert result["train_success_rate_last10"] == pytest.approx(np.mean(logged_successes[-10:]))
    assert result["eval_success_rate"] == float(result["eval_pose_fraction"] >= 0.5)
    assert scalars["eval/pose_fraction"][-1][1] == pytest.approx(result["eval_pose_fraction"])
    # The baselines, logged once at step 0 and saved with the results.
    for name in ("zero_actions_pose_fraction", "zero_actions_success_rate", "random_actions_pose_fraction",
                 "random_actions_success_rate"):
        assert scalars[f"baselines/{name}"] == [(0, pytest.approx(result[name]))], name
    # A single evaluation episode: nothing to differ from.
    assert scalars["eval/distinct_pose_fractions"][-1][1] == 1 and scalars["eval/pose_fraction_spread"][-1][1] == 0

    with open(os.path.join(result["run_dir"], "results.json")) as f:
        saved = json.load(f)
    assert saved["args"]["prompt"] == [PAPER_PROMPTS["standing-up"]] and saved["args"]["task"] == "standing-up"
    assert {"eval_success_rate", "eval_pose_fraction", "train_success_rate_last10",
            "zero_actions_pose_fraction"} <= set(saved["results"])


def test_action_baselines_are_the_detectors_verdict_on_zero_and_random_actions():
    """Zero actions, replayed here from the same start states, give the baseline's steps in the pose: left without
    torques the robot collapses onto its heels and kneels for a while, so the kneeling baseline is not zero;
    random actions stand up (briefly) less often than a robot left alone, which starts upright."""
    args = humanoid.Args(task="kneeling", baseline_episodes=2)
    baselines = humanoid.action_baselines(args)
    env = humanoid.make_env(args.episode_length, task="kneeling")()
    fractions = []
    for episode in range(2):
        env.reset(seed=args.seed + 20_000 + episode)
        fractions.append(np.mean([env.step(np.zeros(17, np.float32))[1] for _ in range(args.episode_length)]))
    assert baselines["zero_actions_pose_fraction"] == pytest.approx(np.mean(fractions)) and 0.05 < np.mean(fractions) < 0.5
    assert baselines["zero_actions_success_rate"] == 0.0 and 0.0 <= baselines["random_actions_pose_fraction"] < 0.5
    standing = humanoid.action_baselines(humanoid.Args(task="standing-up", baseline_episodes=2))
    assert standing["zero_actions_pose_fraction"] > standing["random_actions_pose_fraction"] > 0.0


def test_baselines_leave_the_seeded_run_unchanged(tmp_path, monkeypatch):
    """The baseline episodes run in an env of their own with their own seeds: a run with them stores the same
    transitions and ends with the same losses as the same run without them."""
    runs = []
    for episodes in (0, 2):
        buffers = capture_buffers(humanoid, monkeypatch)
        result = humanoid.main(humanoid.Args(
            reward="pose", task="kneeling", baseline_episodes=episodes, num_envs=2, episode_length=20,
            total_timesteps=120, learning_starts=60, train_frequency=30, gradient_steps=2, batch_size=16,
            hidden_size=16, eval_episodes=0, fast_render=True, output_dir=str(tmp_path / str(episodes))))
        runs.append((buffers[0], result))
    (without, plain), (with_baselines, result) = runs
    assert "zero_actions_pose_fraction" in result and "zero_actions_pose_fraction" not in plain
    for name in ("obs", "actions", "rewards"):
        np.testing.assert_array_equal(getattr(without, name), getattr(with_baselines, name))
    assert result["td_loss"] == plain["td_loss"] and result["actor_loss"] == plain["actor_loss"]


def test_training_samples_pose_scores_also_when_the_buffer_wraps(tmp_path, monkeypatch):
    """A buffer smaller than the run: every sample taken for training sees the graded scores, never unscored
    NaN and never only the in-pose flags."""
    sampled = []
    sample = humanoid.ReplayBuffer.sample

    def checked_sample(self, batch_size):
        stored = self.rewards[: self.size if self.full else self.pos]
        sampled.append(bool(np.isfinite(stored).all() and not np.isin(stored, [0.0, 1.0]).all()))
        return sample(self, batch_size)

    monkeypatch.setattr(humanoid.ReplayBuffer, "sample", checked_sample)
    buffers = capture_buffers(humanoid, monkeypatch)
    args = humanoid.Args(baseline_episodes=1, reward="pose", task="standing-up", num_envs=2, episode_length=40, total_timesteps=200,
                         learning_starts=100, train_frequency=50, gradient_steps=2, batch_size=16, hidden_size=16,
                         buffer_size=130, eval_episodes=0, output_dir=str(tmp_path), fast_render=True)
    humanoid.main(args)
    assert buffers[0].full and len(sampled) == 2 * 2 and all(sampled)  # phases at 150 and 200, 2 updates each


@needs_gl
def test_clip_run_logs_the_detectors_success_beside_the_clip_reward(tiny_clip, tmp_path, monkeypatch):
    """A CLIP run: CLIP's rewards train the agent, the task's detector judges it (steps in the pose, success),
    and the correlation of the two rewards and the EPIC distance are logged."""
    # A detector that a random robot both meets and leaves (hips high: it starts standing and falls), so
    # that the ground truth varies and the correlation is defined.
    monkeypatch.setitem(humanoid.TASKS, "kneeling",
                        humanoid.TASKS["kneeling"]._replace(conditions=[("pelvis_height", ">", 0.8, 0.5)]))
    name, checkpoint, _ = tiny_clip
    args = humanoid.Args(baseline_episodes=1, clip_model=name, clip_pretrained=checkpoint, task="kneeling", num_envs=2, episode_length=20,
                         total_timesteps=120, learning_starts=60, train_frequency=30, gradient_steps=2, batch_size=16,
                         hidden_size=16, eval_episodes=1, video_interval=10**9, fast_render=True,
                         clip_precision="fp32", output_dir=str(tmp_path))
    buffers = capture_buffers(humanoid, monkeypatch)
    result = humanoid.main(args)
    scalars = read_scalars(result["run_dir"])
    expected = {"charts/episodic_return", "charts/success_rate", "charts/pose_fraction", "charts/episodic_clip_return",
                "eval/success_rate", "eval/pose_fraction", "eval/clip_return", "landscape/in_pose_minus_out"}
    assert expected <= set(scalars), expected - set(scalars)
    assert os.path.getsize(os.path.join(result["run_dir"], "reward_landscape.png")) > 0  # standing to kneeling, scored
    assert np.isfinite(scalars["landscape/in_pose_minus_out"][0][1])  # the patched detector: in at the start, out at the end
    returns = [v for _, v in scalars["charts/episodic_return"]]
    assert len(returns) == 120 // 20 and all(r == int(r) and 0 <= r <= 20 for r in returns)  # steps in the pose
    rb = buffers[0]
    assert not np.isin(rb.rewards[: rb.pos], [0.0, 1.0]).any()  # CLIP's rewards are stored, not the flags
    assert 0.0 <= result["eval_pose_fraction"] <= 1.0 and result["eval_success_rate"] in (0.0, 1.0)
    correlation, epic = dict(scalars["charts/reward_correlation"]), dict(scalars["charts/epic_distance"])
    assert correlation.keys() == epic.keys() and len(epic) > 0
    np.testing.assert_allclose([epic[k] for k in epic], [np.sqrt((1 - correlation[k]) / 2) for k in epic], rtol=1e-5)
