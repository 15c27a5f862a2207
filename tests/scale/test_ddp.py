"""Two-process DDP (gloo on CPU), launched by Lightning from ``python train.py`` exactly as users run it, on
shards that split unevenly over the ranks: no hang, equal batch counts, one run dir, validation included."""

import json
import time

from tests.scale.helpers import run_train, shard_of, tiny_overrides, train_env

MAX_STEPS, VAL_EVERY, VAL_BATCHES = 4, 2, 2


def test_ddp_on_uneven_shards_runs_equal_batches_without_hang(uneven_shards, tmp_path):
    log_dir = tmp_path / "logs"
    args = tiny_overrides(uneven_shards, log_dir) + [
        "trainer.devices=2", "+trainer.strategy=ddp", f"stage.max_steps={MAX_STEPS}",
        f"stage.val_every_n_steps={VAL_EVERY}", f"stage.val_batches={VAL_BATCHES}",
        "stage.checkpoint_every_n_steps=100", "callbacks.run_stats.step_log=false",
    ]
    start = time.time()
    # No GENRECON_RUN_NAME: rank 0 derives a timestamp name and Lightning hands its run dir to rank 1.
    run_train(args, train_env(), tmp_path / "ddp.log", timeout=240)
    elapsed = time.time() - start

    runs = list((log_dir / "train" / "runs").iterdir())
    assert len(runs) == 1, f"ranks wrote to several run dirs: {runs}"
    run = runs[0]
    stats = [json.loads((run / f"rank_{r}_stats.json").read_text()) for r in (0, 1)]
    for rank, s in enumerate(stats):
        assert s["status"] == "finished" and s["rank"] == rank and s["world_size"] == 2
        assert s["train_batches"] == MAX_STEPS and s["last_step"] == MAX_STEPS
        assert s["val_runs"] == MAX_STEPS // VAL_EVERY
        assert s["val_batches"] == s["val_runs"] * VAL_BATCHES
    assert stats[0]["train_batches"] == stats[1]["train_batches"]
    assert stats[0]["val_batches"] == stats[1]["val_batches"]
    assert stats[0]["epochs"] == stats[1]["epochs"]

    # The shards really are uneven: rank 0 reads shards 0 and 2 (4 samples), rank 1 shard 1 (3 samples).
    seen = [{shard_of(k) for batch in s["first_batch_keys"] for k in batch} for s in stats]
    assert seen[0] <= {0, 2} and seen[1] == {1}, seen

    # Only rank 0 wrote Hydra's files and job log; rank 1 ran in the same dir with them switched off.
    hydra_yaml = (run / ".hydra" / "hydra.yaml").read_text()
    assert "train_ddp_process" not in hydra_yaml
    assert "[rank: 1]" not in (run / "train.log").read_text()
    assert sorted(p.name for p in run.glob("*.log")) == ["config_tree.log", "train.log"]
    print(f"2-process DDP, {MAX_STEPS} steps + {MAX_STEPS // VAL_EVERY} validations: {elapsed:.1f}s")


def test_quiet_ranks_get_a_logging_config_without_handlers():
    """Non-zero ranks run with hydra/job_logging=disabled (run_dir.quiet_hydra_argv); the project's log-file
    name lives in its own job_logging option, so nothing is merged into the disabled one (before, rank 1 of
    every Lightning-launched DDP run died with "Unable to configure handler 'file'")."""
    from tests.conftest import compose_config

    quiet = compose_config("train", ["hydra/job_logging=disabled"])
    assert "handlers" not in quiet.hydra.job_logging
    default = compose_config("train", [])
    assert default.hydra.job_logging.handlers.file["class"] == "logging.FileHandler"
    from omegaconf import OmegaConf

    filename = OmegaConf.to_container(default.hydra.job_logging.handlers.file, resolve=False)["filename"]
    assert filename == "${hydra.runtime.output_dir}/${task_name}.log"
