"""benchmarks/reward_report.py: figures that see what the encoder sees, caches that are reused only when nothing
changed, and bad input stopped before anything is embedded. Encoders are stand-ins or a tiny random CLIP."""

import json
import math
import os
import shlex

import numpy as np
import pytest
import torch
import tyro

from conftest import CarPositionEncoder, load_benchmark, needs_gl, report_args_printed
import sac_clip_humanoid as humanoid
import sac_clip_mountaincar as mountaincar

report = load_benchmark("reward_report")


def stand_in(encoder, label="stand-in"):
    """A report's model entry for a stand-in encoder, and the list of frame counts its image encoder was called on."""
    calls, encode = [], encoder.encode_image

    def counting(x):
        calls.append(len(x))
        return encode(x)

    encoder.encode_image = counting
    embedder = mountaincar.CLIPReward(encoder, encoder.tokenizer, ("any",), ("other",), 0.0)  # only embeds frames
    return dict(label=label, identity=[label], tokenizer=encoder.tokenizer, encoder=embedder), calls


class NegatedCarPosition(CarPositionEncoder):
    def encode_image(self, x):
        return -super().encode_image(x)


class Blind(CarPositionEncoder):
    """Sees nothing: the same embedding for every frame, so a constant reward."""

    def angle(self, pixels):
        return torch.zeros(len(pixels))


def mountaincar_args(tmp_path, **overrides):
    return report.Args(**{**dict(env="mountaincar", grid=(40, 2), alpha=(0.0, 1.0), out=str(tmp_path / "out"),
                                 cache_dir=str(tmp_path / "cache")), **overrides})


def test_an_encoder_that_sees_the_goal_scores_auc_1_and_epic_near_0_and_reversed_it_scores_auc_0(tmp_path):
    """A stand-in that reads the car's position from the pixels and rewards the flag's states ~1 and all others -1
    (a span of 0.05: only the one or two grid positions just left of the flag get a reward in between). A bug that
    misaligns frames and labels (the deduplication of identical frames, the placing of states) lowers the AUC."""
    entry, calls = stand_in(CarPositionEncoder(span=0.05))
    result = report.main(mountaincar_args(tmp_path), models=[entry])
    assert result["states"] == dict(count=80, goal=8, sources={"grid": 80}, goal_by_source={"grid": 8})  # 4 of 40 x >= 0.45
    assert sum(calls) == 40  # the two velocities of a position have the same frame: embedded once
    for row in result["candidates"]:  # the default prompt names the "peak": the stand-in's goal
        assert row["auc"] > 0.99 and row["epic_distance"] < 0.12, row
        assert row["separation"] > 2.5 and row["spearman_graded"] > 0.3
    negated, _ = stand_in(NegatedCarPosition(span=0.05), label="negated")  # another model: not the cache of the first
    reversed_ = report.main(mountaincar_args(tmp_path, out=str(tmp_path / "negated")), models=[negated])
    for row in reversed_["candidates"]:
        assert row["auc"] < 0.01 and row["epic_distance"] > 0.95 and row["spearman_graded"] < -0.3, row


def test_a_constant_reward_has_no_epic_distance_and_ranks_last(tmp_path):
    """A constant reward is not a perfect one: its correlation is undefined (NaN: null in report.json)."""
    seeing, _ = stand_in(CarPositionEncoder(), label="seeing")
    blind, _ = stand_in(Blind(), label="blind")
    result = report.main(mountaincar_args(tmp_path, alpha=(0.0,)), models=[blind, seeing])
    assert [r["model"] for r in result["candidates"]] == ["seeing", "blind"]
    assert math.isnan(result["candidates"][1]["epic_distance"]) and result["candidates"][1]["auc"] == 0.5
    assert result["models"] == ["blind", "seeing"]  # in the order given, as the summary draws them
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["candidates"][1]["epic_distance"] is None


def test_identical_frames_anywhere_in_the_states_share_their_embedding(tmp_path):
    """Deduplication keeps each state's own frame: the same states in another order give the same vectors in that
    order (MountainCar's velocities do not show, so every position appears several times, apart)."""
    entry, calls = stand_in(CarPositionEncoder())
    args = mountaincar_args(tmp_path)
    states = np.array([(x, v) for v in (-0.05, 0.0, 0.05) for x in np.linspace(-1.2, 0.6, 7)])
    vectors, timing = report.embeddings(args, mountaincar, states, entry)
    assert timing["frames"] == 7 and sum(calls) == 7
    order = np.random.default_rng(0).permutation(len(states))
    shuffled, _ = report.embeddings(args, mountaincar, states[order], entry)
    np.testing.assert_array_equal(shuffled, vectors[order])
    assert len(np.unique(vectors.round(6), axis=0)) == 7


def test_none_in_the_goal_stops_before_anything_is_embedded(tmp_path):
    entry, calls = stand_in(CarPositionEncoder())
    run = tmp_path / "run"
    run.mkdir()
    valley = np.array([[-0.5, 0.0]] * 20, dtype=np.float32)  # a run that never left the valley
    torch.save(dict(buffer=dict(next_obs=torch.tensor(valley))), run / "checkpoint_000000000020.pt")
    with pytest.raises(SystemExit, match="none of the 20 states are in the goal"):
        report.main(mountaincar_args(tmp_path, states=str(run)), models=[entry])
    assert calls == []


def test_a_model_config_file_gets_its_own_tokenizer(tmp_path):
    """A --clip-model .json is registered under its file's name: its tokenizer is the config's (here a context of
    32 tokens), not open_clip's default (77), which would not fit its text tower."""
    import json as json_
    import open_clip

    from conftest import TINY_CONFIG

    config = tmp_path / "tiny-context-32.json"
    config.write_text(json_.dumps({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "context_length": 32}}))
    open_clip.add_model_config(config)
    weights = tmp_path / "weights.pt"
    torch.save(open_clip.create_model("tiny-context-32").state_dict(), weights)
    result = report.main(report.Args(env="cartpole", clip_model=(str(config),), clip_pretrained=(str(weights),),
                                     grid=(3, 3), alpha=(0.0,), out=str(tmp_path / "out"), cache_dir=str(tmp_path / "c")))
    assert result["models"] == ["tiny-context-32.json weights.pt"] and len(result["candidates"]) == 1


def test_a_tiny_random_clip_gives_finite_figures_and_a_report_whose_command_makes_it(tiny_clip, tmp_path):
    name, checkpoint, _ = tiny_clip
    args = report.Args(env="cartpole", clip_model=(name,), clip_pretrained=(checkpoint,), grid=(5, 4),
                       alpha=(0.0, 0.5, 1.0), out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    result = report.main(args)
    rows = result["candidates"]
    assert len(rows) == 3 and result["states"]["count"] == 20 and 0 < result["states"]["goal"] < 20
    for row in rows:
        for key in ("epic_distance", "pearson", "auc", "spearman_graded", "separation", "spread"):
            assert math.isfinite(row[key]), (key, row)
    assert [r["epic_distance"] for r in rows] == sorted(r["epic_distance"] for r in rows)  # best first
    assert sum(r["default"] for r in rows) == 1
    table = (tmp_path / "out" / "report.md").read_text()
    assert table.count("\n| ") == 1 + 3  # the header and one row per candidate
    assert os.path.getsize(tmp_path / "out" / "report.png") > 10_000
    # The command written in the report parses back into the same flags.
    words = shlex.split(result["command"])
    assert words[:2] == ["python", "benchmarks/reward_report.py"] and tyro.cli(report.Args, args=words[2:]) == args


def test_new_prompts_and_alphas_reuse_the_embeddings_and_a_changed_scene_does_not(tmp_path):
    entry, calls = stand_in(CarPositionEncoder())
    first = report.main(mountaincar_args(tmp_path), models=[entry])
    embedded = len(calls)
    assert embedded > 0 and len(first["candidates"]) == 2
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# goal prompts; then | and baseline prompts\n"
                       "a red car on the peak | a car\n"
                       "the car at the peak; a car next to the flag\n")
    second = report.main(mountaincar_args(tmp_path, prompts_file=str(prompts), alpha=(0.0, 0.5, 1.0)), models=[entry])
    assert len(calls) == embedded  # no frame embedded again
    assert len(second["candidates"]) == 3 * 3
    goals = {tuple(r["goal"]) for r in second["candidates"]}
    assert ("the car at the peak", "a car next to the flag") in goals
    assert {tuple(r["baseline"]) for r in second["candidates"]} == {("a car",), mountaincar.Args.baseline_prompt}
    report.main(mountaincar_args(tmp_path, textured=False), models=[entry])  # gymnasium's look: other frames
    assert len(calls) > embedded


@needs_gl
def test_another_state_seed_makes_other_humanoid_states_and_embeds_them(tmp_path):
    entry, calls = stand_in(CarPositionEncoder(size=(32, 32)))
    settings = dict(env="humanoid", task="doing-splits", episodes=1, jitters=0, path_points=2, fast_render=True,
                    alpha=(0.0,), cache_dir=str(tmp_path / "cache"))
    first = report.main(report.Args(**settings, out=str(tmp_path / "a")), models=[entry])
    # 100 steps each of zero and random actions, 2 poses on each task's path, the 15 hand-built poses.
    assert first["states"]["sources"] == {"zero actions": 100, "random actions": 100, "landscape paths": 16,
                                          "hand-built poses": 15}
    assert first["states"]["goal"] >= 2  # the splits' own hand-built pose and its path's end
    embedded = len(calls)
    report.main(report.Args(**{**settings, "task": "kneeling"}, out=str(tmp_path / "b")), models=[entry])
    assert len(calls) == embedded  # the same states serve every task
    report.main(report.Args(**settings, state_seed=1, out=str(tmp_path / "c")), models=[entry])
    assert len(calls) > embedded
    embedded = len(calls)
    report.main(report.Args(**settings, camera="stock", out=str(tmp_path / "d")), models=[entry])  # other frames
    assert len(calls) > embedded


def test_bad_input_stops_with_one_sentence_before_anything_is_embedded(tmp_path):
    entry, calls = stand_in(CarPositionEncoder())
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    no_buffer = tmp_path / "run_without_buffer"
    no_buffer.mkdir()
    torch.save(dict(global_step=100, buffer=None), no_buffer / "checkpoint_000000000100.pt")
    cases = [(dict(prompts_file=str(empty)), "--prompts-file .* holds no candidate"),
             (dict(alpha=(0.0, 1.5)), r"--alpha takes values in \[0, 1\]"),
             (dict(env="humanoid", task="sitting"), "--task must be one of kneeling, lotus-position"),
             (dict(states=str(no_buffer)), "holds no replay buffer"),
             (dict(states=str(tmp_path)), r"holds no readable checkpoint \(checkpoint_\*.pt\)"),
             (dict(clip_model=("RN50", "ViT-B-32")), "one tag or file per --clip-model"),
             (dict(prompt=("a car",), baseline_prompt=("A car",)), "the same goal and baseline prompts"),
             (dict(clip_model=("ViT-B-32", "ViT-Nope-99"), clip_pretrained=("laion2b_s34b_b79k", "x")),
              "--clip-model 'ViT-Nope-99' is not an open_clip architecture"),
             (dict(clip_model=("ViT-B-32", "ViT-B-32"), clip_pretrained=("laion2b_s34b_b79k",) * 2), "the same model"),
             (dict(out=str(empty)), "is a file"),
             (dict(grid=(1, 5)), "--grid must be at least 2")]
    for flags, message in cases:
        with pytest.raises(SystemExit, match=message) as stop:
            report.main(mountaincar_args(tmp_path, **flags), models=[entry])
        assert str(stop.value).startswith("error: ") and "\n" not in str(stop.value)
    assert calls == [] and not os.path.exists(tmp_path / "cache")


def test_reading_a_live_runs_states_leaves_its_checkpoint_being_written_alone(tmp_path):
    """A run may be writing its next checkpoint (a .tmp file, renamed when complete) while its states are read."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save(dict(buffer=dict(next_obs=torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))), run / "checkpoint_000000000002.pt")
    (run / "checkpoint_000000000004.pt.tmp").write_bytes(b"half written")
    (run / "checkpoint_000000000004.pt").write_bytes(b"not yet whole")  # unreadable: the one before it is read
    states, _ = report.run_states(report.Args(env="mountaincar", states=str(run)), mountaincar)
    assert sorted(states[:, 0]) == [-0.5, 0.5]
    assert sorted(os.listdir(run)) == ["checkpoint_000000000002.pt", "checkpoint_000000000004.pt",
                                       "checkpoint_000000000004.pt.tmp"]


@needs_gl
def test_a_humanoid_runs_states_come_back_from_its_buffer_as_the_poses_it_reached(tmp_path):
    """A humanoid observation starts with qpos without x and y, then qvel: the states rebuilt from a run's buffer put
    the robot back in the same pose (at x = y = 0), so the detector labels them as it labelled the run's."""
    env = humanoid.CLIPHumanoidEnv((32, 32), fast_render=True, task="kneeling")
    env.reset(seed=0)
    observations, qpos, qvel, flags = [], [], [], []
    for _ in range(30):
        obs, _, _, _, info = env.step(np.zeros(env.action_space.shape))  # zero actions: the robot kneels for a while
        observations.append(obs)
        qpos.append(env.data.qpos.copy())
        qvel.append(env.data.qvel.copy())
        flags.append(info["in_pose"])
    run = tmp_path / "run"
    run.mkdir()
    torch.save(dict(global_step=30, buffer=dict(next_obs=torch.tensor(np.array(observations)))),
               run / "checkpoint_000000000030.pt")
    states, sources = report.run_states(report.Args(env="humanoid", states=str(run), sample=30), humanoid)
    assert sources == ["run"] * 30 and (states[:, :2] == 0).all()
    nq = env.model.nq
    np.testing.assert_allclose(states[:, 2:nq], np.array(qpos)[:, 2:], atol=1e-5)
    np.testing.assert_allclose(states[:, nq:], np.array(qvel), rtol=1e-5, atol=1e-4)
    goal, _ = report.labels(report.Args(env="humanoid", task="kneeling"), humanoid, states)
    assert list(goal) == flags
    with pytest.raises(SystemExit, match="is not a cartpole run"):
        report.run_states(report.Args(env="cartpole", states=str(run)), humanoid)


def test_a_scripts_printed_report_command_names_its_model_prompts_and_alpha(tmp_path, tiny_clip, capsys):
    """What the landscape line prints runs: the report of that command scores the run's own reward."""
    import dqn_clip_cartpole as cartpole

    name, checkpoint, _ = tiny_clip
    args = cartpole.Args(clip_model=name, clip_pretrained=checkpoint, alpha=0.5, prompt=("a pole", "an upright pole"))
    print("reward landscape: ... with other prompts and alphas: " + cartpole.reward_report_command("cartpole", args, args.prompt))
    flags = report_args_printed(capsys.readouterr().out)
    assert (flags.env, flags.clip_model, flags.clip_pretrained) == ("cartpole", (name,), (checkpoint,))
    assert (flags.prompt, flags.baseline_prompt, flags.alpha) == (args.prompt, args.baseline_prompt, (0.5,))
    flags.grid, flags.out, flags.cache_dir = (3, 3), str(tmp_path / "out"), str(tmp_path / "cache")
    rows = report.main(flags)["candidates"]
    assert [(tuple(r["goal"]), r["alpha"]) for r in rows] == [(args.prompt, 0.5)]
