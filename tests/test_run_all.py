"""run_all.sh: the paper's grid, local and SLURM execution, the summary, failures that are not fatal."""

import csv
import os
import subprocess
import sys

from conftest import ROOT

RUN_ALL = os.path.join(ROOT, "run_all.sh")


def run_all(*flags, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy", **(env_extra or {})}
    return subprocess.run(["bash", RUN_ALL, "--python", sys.executable, *flags], capture_output=True, text=True,
                          env=env, timeout=1200)


def read_summary(folder):
    with open(os.path.join(folder, "summary.csv")) as f:
        return list(csv.DictReader(f))


def test_dry_run_lists_the_papers_grid():
    result = run_all("--dry-run", "--seeds", "2")
    assert result.returncode == 0 and not result.stderr
    commands = result.stdout.strip().splitlines()
    count = lambda text: sum(text in c for c in commands)  # noqa: E731
    # Per seed: CartPole 5 alphas + ground truth; MountainCar textured and plain x 5 alphas + ground
    # truth; Humanoid 8 tasks of Table 1, 2 more scenes for the ablation, 3 more models for the scale.
    assert count("dqn_clip_cartpole.py") == 2 * 6 and count("sac_clip_mountaincar.py") == 2 * 11
    assert count("sac_clip_humanoid.py") == 2 * 13 and len(commands) == 2 * 30
    assert count("--reward ground-truth") == 2 * 2
    assert count("--no-textured --alpha") == 2 * 5 and count("--textured --alpha") == 2 * 5
    for alpha in ("0", "0.25", "0.5", "0.75", "1"):
        assert count(f"--exp-name cartpole_alpha{alpha} --alpha {alpha} ") == 2
    assert count("--task kneeling ") == 2 * 6  # Table 1, 2 ablation scenes, 3 models
    for task in ("lotus-position", "standing-up", "arms-raised", "doing-splits", "hands-on-hips", "arms-crossed",
                 "standing-on-one-leg"):
        assert count(f"--task {task} ") == 2, task
    # The scene ablation, one change per row as in the paper: the original scene (stock textures and
    # stock camera), then the textures with the stock camera; no run has the stock textures alone.
    humanoid = [c for c in commands if "sac_clip_humanoid.py" in c]
    original = [c for c in humanoid if "--no-textured --camera stock" in c]
    assert len(original) == 2 and all("--exp-name humanoid_kneeling_original_scene " in c for c in original)
    assert {c.split("--seed ")[1].split()[0] for c in original} == {"1", "2"}
    assert all("--camera stock" in c for c in humanoid if "--no-textured" in c)
    assert count("--exp-name humanoid_kneeling_stock_camera --camera stock --task kneeling ") == 2
    assert count("humanoid_kneeling_stock_textures") == 0
    for model in ("RN50-quickgelu --clip-pretrained openai", "ViT-L-14", "ViT-H-14"):
        assert count(f"--clip-model {model}") == 2
    assert count("--seed 1 ") == 30 and count("--seed 2 ") == 30
    assert len(set(commands)) == len(commands)
    only = run_all("--dry-run", "--only", "cartpole", "--only", "humanoid").stdout.strip().splitlines()
    assert len(only) == 6 + 13


def test_bad_flags_give_the_usage():
    for flags in (["--only", "pong"], ["--seeds", "0"], ["--bogus"]):
        result = run_all(*flags)
        assert result.returncode == 2 and "usage: bash run_all.sh" in result.stderr, flags


def test_smoke_grid_runs_every_experiment_and_writes_the_summary(tmp_path):
    """CartPole's and the humanoid's experiments for a few steps each (MountainCar's differ from CartPole's
    only in flags the dry run checks, and each run costs ~8 s of start-up), one run failing on purpose: it
    is recorded as failed and the others finish; the summary is rebuilt from the run folders; a killed run
    is listed as missing."""
    wrapper = tmp_path / "python_that_fails_once"
    wrapper.write_text(f'#!/usr/bin/env bash\ncase "$*" in *cartpole_alpha0.25*) exit 3 ;; esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    result = run_all("--python", str(wrapper), "--smoke", "--only", "cartpole", "--only", "humanoid", "--jobs", "2",
                     "--output-dir", str(out))  # the last --python wins
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FAILED (exit 3) cartpole_alpha0.25_seed1" in result.stdout
    rows = read_summary(out)
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 6 + 13 and [r["experiment"] for r in failed] == ["cartpole_alpha0.25"], failed
    assert all(int(r["steps"]) > 0 and r["git_commit"] for r in rows if r["status"] == "ok")
    table = (out / "summary.md").read_text()
    assert "## CartPole" in table and "## Humanoid" in table
    assert "| humanoid_kneeling_RN50 | 1 |" in table and "| cartpole_alpha0.25 | 1 | - | - | 1 |" in table
    # The kneeling scene ablation in the paper's order, with the paper's success next to each row.
    ablation = table.split("## Scene ablation (kneeling")[1].split("\n\n")[1].splitlines()[2:]
    assert [row.split(" | ")[:4] for row in ablation] == [
        ["| original scene (stock textures, stock camera)", "36%", "humanoid_kneeling_original_scene", "1"],
        ["| modified textures, stock camera", "91%", "humanoid_kneeling_stock_camera", "1"],
        ["| modified textures and camera", "100%", "humanoid_kneeling", "1"]]
    # Success by the pose detector (a number: smoke runs rarely reach the pose) and the CLIP reward, no failure.
    assert all(row.split(" | ")[4] != "-" and row.split(" | ")[5] != "-" and row.endswith(" | 0 |") for row in ablation)

    # The summary is rebuilt from the run folders alone.
    before = (out / "summary.csv").read_text()
    os.remove(out / "summary.csv")
    os.remove(out / "summary.md")
    assert run_all("--summary-only", "--output-dir", str(out)).returncode == 0
    assert (out / "summary.csv").read_text() == before and (out / "summary.md").is_file()

    # A run with neither results nor an exit status (killed) is listed as missing, not dropped.
    (killed,) = (out / "runs").glob("CartPole__cartpole_alpha1__*")
    os.remove(killed / "results.json")
    os.remove(out / "logs" / "cartpole_alpha1_seed1.status")
    assert run_all("--summary-only", "--output-dir", str(out)).returncode == 0
    missing = [r for r in read_summary(out) if r["status"].startswith("missing")]
    assert [r["experiment"] for r in missing] == ["cartpole_alpha1"]


def test_slurm_submits_one_array_task_per_run(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/sbatch_args\necho "Submitted batch job 1"\n')
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "out"
    result = run_all("--slurm", "--only", "mountaincar", "--seeds", "2", "--partition", "gpu", "--gpus-per-task", "1",
                     "--output-dir", str(out), env_extra={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sbatch_args").read_text().strip() == str(out / "slurm_array.sh")
    array = (out / "slurm_array.sh").read_text()
    assert "#SBATCH --array=0-21" in array and "#SBATCH --partition=gpu" in array and "--gres=gpu:1" in array
    commands = (out / "commands.txt").read_text().strip().splitlines()
    assert len(commands) == 22 and all("sac_clip_mountaincar.py" in c for c in commands)
    assert not list((out / "runs").iterdir())  # nothing ran here
