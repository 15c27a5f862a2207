"""benchmarks/full_pipeline.py builds the jobs of its texture-VAE A/B phase (the jobs themselves are the
train.py and vae_quality.py runs tested elsewhere)."""

from __future__ import annotations

from tests.conftest import load_script


def test_vae_variants_train_side_by_side_then_score_each(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "vae_variants", "--vae-minutes", "2",
                          "--tex-vae-args", "stage.module.lr=2e-3", "--tex-vae-variant", "base",
                          "--tex-vae-variant", "wide", "stage.module.decoder_blocks=[4,4,1]", "seed=3"])
    pipe = fp.Pipeline(args)
    batches = []

    def fake_run(jobs):
        batches.append(jobs)
        for job in jobs:  # training leaves a checkpoint behind for the scoring step
            if job.name.startswith("tex_vae_"):
                (pipe.ckpt(job.name)).parent.mkdir(parents=True, exist_ok=True)
                pipe.ckpt(job.name).touch()
        return {job.name: 0 for job in jobs}

    monkeypatch.setattr(pipe, "run", fake_run)
    pipe.vae_variants()
    train, score = batches
    assert [j.name for j in train] == ["tex_vae_base", "tex_vae_wide"]
    assert [j.gpu for j in train] == [0, 1]
    base, wide = (j.argv for j in train)
    assert "stage=tex_vae" in base and "stage.module.lr=2e-3" in base and "stage.module.lr=2e-3" in wide
    assert "stage.module.decoder_blocks=[4,4,1]" in wide and "seed=3" in wide
    assert "stage.module.decoder_blocks=[4,4,1]" not in base
    assert train[1].env["GENRECON_RUN_NAME"] == "tex_vae_wide"
    assert [j.name for j in score] == ["vae_quality_base", "vae_quality_wide"]
    assert str(pipe.ckpt("tex_vae_wide")) in score[1].argv
    assert str(pipe.results / "vae_quality_wide.json") in score[1].argv
