"""Run names are identical across ranks and requeues; only rank zero writes Hydra's files."""

from genrecon.utils.run_dir import derive_run_name, global_rank, quiet_hydra_argv


def test_slurm_job_id_names_the_run_on_every_rank():
    names = {
        derive_run_name({"SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "16"}, now=rank)
        for rank in range(16)
    }
    assert names == {"slurm-4242"}


def test_array_jobs_get_one_directory_per_task():
    env = {"SLURM_JOB_ID": "100", "SLURM_ARRAY_JOB_ID": "99", "SLURM_ARRAY_TASK_ID": "3"}
    assert derive_run_name(env) == "slurm-99_3"


def test_explicit_name_wins_and_timestamp_is_the_fallback():
    assert derive_run_name({"GENRECON_RUN_NAME": "mine", "SLURM_JOB_ID": "1"}) == "mine"
    assert derive_run_name({"TORCHELASTIC_RUN_ID": "abc"}) == "torchrun-abc"
    assert derive_run_name({}, now=0.0).startswith("1970-01-01")


def test_global_rank_prefers_launcher_rank():
    assert global_rank({"RANK": "3", "LOCAL_RANK": "1"}) == 3
    assert global_rank({"SLURM_PROCID": "5"}) == 5
    assert global_rank({}) == 0


def test_nonzero_ranks_do_not_write_hydra_files():
    argv = ["train.py", "stage=ss_vae"]
    assert quiet_hydra_argv(argv, {"SLURM_PROCID": "0"}) == argv
    quiet = quiet_hydra_argv(argv, {"SLURM_PROCID": "2"})
    assert "hydra.output_subdir=null" in quiet and "hydra/job_logging=disabled" in quiet
    # Lightning's DDP launcher already passes output_subdir: never pass it twice
    lightning_child = ["train.py", "hydra.output_subdir=null"]
    assert quiet_hydra_argv(lightning_child, {"LOCAL_RANK": "1"}).count("hydra.output_subdir=null") == 1
