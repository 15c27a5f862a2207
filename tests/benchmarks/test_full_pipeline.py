"""benchmarks/full_pipeline.py builds the jobs of its texture-VAE A/B phase (the jobs themselves are the
train.py and vae_quality.py runs tested elsewhere)."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


def test_vae_variants_train_side_by_side_then_score_each(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "vae_variants", "--vae-minutes", "2",
                          "--tex-vae-args", "stage.module.lr=2e-3", "--tex-vae-variant", "base",
                          "--tex-vae-variant", "wide", "stage.module.decoder_blocks=[4,4,1]", "seed=3"])
    pipe = fp.Pipeline(args)
    batches = []

    def fake_run(jobs, detach=()):
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


def test_vae_phase_trains_variants_beside_the_main_texture_vae(tmp_path, monkeypatch):
    """In phase vae a variant shares the main texture VAE's GPU and takes only its own overrides, so the A/B
    compares the encode-time VAE (with --tex-vae-args) against the variant under the same conditions."""
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "vae",
                          "--tex-vae-args", "stage.module.mean_shortcut=true", "--tex-vae-variant", "published"])
    pipe = fp.Pipeline(args)
    batches = []

    def fake_run(jobs, detach=()):
        batches.append(jobs)
        for job in jobs:
            if job.name.startswith(("tex_vae", "ss_vae", "shape_vae")):
                pipe.ckpt(job.name).parent.mkdir(parents=True, exist_ok=True)
                pipe.ckpt(job.name).touch()
        return {job.name: 0 for job in jobs}

    monkeypatch.setattr(pipe, "run", fake_run)
    pipe.vae()
    train, score = batches
    by_name = {j.name: j for j in train}
    assert sorted(by_name) == ["shape_vae", "ss_vae", "tex_vae", "tex_vae_published"]
    assert by_name["tex_vae"].gpu == by_name["tex_vae_published"].gpu == 1
    assert "stage.module.mean_shortcut=true" in by_name["tex_vae"].argv
    assert "stage.module.mean_shortcut=true" not in by_name["tex_vae_published"].argv
    assert [j.name for j in score] == ["vae_quality_published"]


def flow_phase(fp, args, monkeypatch):
    """The pipeline of ``args`` after its flow phase with a fake job runner that "trains" every job (touches its
    checkpoint); returns it and the list of job batches the runner got, to which later phases append."""
    pipe = fp.Pipeline(args)
    batches = []

    def fake_run(jobs, detach=()):
        batches.append(jobs)
        for job in jobs:
            pipe.ckpt(job.name).parent.mkdir(parents=True, exist_ok=True)
            pipe.ckpt(job.name).touch()
        return {job.name: 0 for job in jobs}

    monkeypatch.setattr(pipe, "run", fake_run)
    pipe.flow()
    return pipe, batches


def two_gpu_flows(tmp_path, monkeypatch, *argv: str):
    """The script and :func:`flow_phase` of a 2-GPU pipeline (phases flow, flow_quality) given ``argv``."""
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "flow", "flow_quality", *argv])
    return (fp, *flow_phase(fp, args, monkeypatch))


def test_one_family_of_flows_spreads_evenly_over_the_gpus(tmp_path, monkeypatch):
    """SS arms alone on a two-GPU machine take a GPU each (session 30 ran both on GPU 0 while GPU 1 idled), and the
    view pretraining takes the texture VAE's GPU when that VAE does not train; arms that cannot share the GPUs
    equally stay together on GPU 0."""
    fp, pipe, batches = two_gpu_flows(tmp_path, monkeypatch, "--vaes", "ss_vae", "--view-pretrain-minutes", "2",
                                      "--flows", "ss_flow_cell",
                                      "--flow-variant", "ss_flow_cell_pvs=ss_flow_cell:a=1")
    assert {j.name: j.gpu for j in batches[0]} == {"ss_flow_cell": 0, "ss_flow_cell_pvs": 1}
    pipe.vae()
    assert {j.name: j.gpu for j in batches[1]} == {"ss_vae": 0, "view_pretrain": 1}
    assert fp.default_flow_gpus(["ss_a", "ss_b", "ss_c"], 2) == {"ss_a": 0, "ss_b": 0, "ss_c": 0}
    assert fp.default_flow_gpus(["ss_a", "ss_b", "ss_c", "ss_d"], 2) == {"ss_a": 0, "ss_b": 1, "ss_c": 0, "ss_d": 1}
    assert fp.default_flow_gpus(["ss_a", "tex_b"], 4) == {"ss_a": 0, "tex_b": 1}
    assert fp.default_flow_gpus(["ss_a", "ss_b"], 1) == {"ss_a": 0, "ss_b": 0}


def test_flow_phase_places_the_aux_runs_beside_their_baselines(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(
        tmp_path, monkeypatch, "--flows", "ss_flow", "ss_flow_noproj", "ss_flow_aux", "tex_flow", "tex_flow_aux")
    by_name = {j.name: j for j in batches[0]}
    assert {n: j.gpu for n, j in by_name.items()} == {"ss_flow": 0, "ss_flow_noproj": 0, "ss_flow_aux": 0,
                                                      "tex_flow": 1, "tex_flow_aux": 1}
    assert fp.OCC_AUX in by_name["ss_flow_aux"].argv and fp.OCC_AUX not in by_name["ss_flow"].argv
    assert fp.LATENT_AUX in by_name["tex_flow_aux"].argv and fp.LATENT_AUX not in by_name["tex_flow"].argv
    pipe.flow_quality()
    names = {j.name: j.argv for j in batches[1]}
    assert sorted(names) == ["flow_quality", "flow_quality_aux"]  # no photo run: no photo family
    aux = names["flow_quality_aux"]
    assert aux[aux.index("--ss-flow") + 1] == str(pipe.ckpt("ss_flow_aux"))
    assert aux[aux.index("--ss-flow-ablation") + 1] == str(pipe.ckpt("ss_flow_noproj"))
    assert aux[aux.index("--tex-flow") + 1] == str(pipe.ckpt("tex_flow_aux"))


def scoring_jobs(tmp_path, monkeypatch, runs: tuple[str, ...], *argv: str):
    """The script, the pipeline (phase flow_quality, ``argv`` added) with ``runs`` trained (their checkpoints
    touched), and the jobs its scoring phase starts."""
    fp = load_script("benchmarks/full_pipeline.py")
    pipe = fp.Pipeline(fp.parse_args(["--root", str(tmp_path), "--phases", "flow_quality", *argv]))
    for run in runs:
        pipe.ckpt(run).parent.mkdir(parents=True, exist_ok=True)
        pipe.ckpt(run).touch()
    batches = []
    monkeypatch.setattr(pipe, "run", lambda jobs: batches.append(jobs) or {j.name: 0 for j in jobs})
    pipe.flow_quality()
    return fp, pipe, batches[0]


def test_flow_quality_skips_the_base_family_without_a_main_flow(tmp_path, monkeypatch):
    """With only variant runs and the ablation trained, the ablation is scored inside the variant families; a
    base family of the ablation alone would only repeat that work on a GPU the variants need."""
    _, pipe, batch = scoring_jobs(tmp_path, monkeypatch, ("ss_flow_aux", "ss_flow_depth", "ss_flow_noproj",
                                                          "tex_flow_aux", "tex_flow_depth"), "--gpus", "2")
    batches = [batch]
    jobs = {j.name: j for j in batches[0]}
    assert sorted(jobs) == ["flow_quality_aux", "flow_quality_depth"]
    assert [j.gpu for j in batches[0]] == [0, 1]
    depth = jobs["flow_quality_depth"].argv
    assert depth[depth.index("--ss-flow-ablation") + 1] == str(pipe.ckpt("ss_flow_noproj"))


def test_flow_quality_extra_scores_a_family_again_with_its_arguments_on_a_gpu_of_its_own(tmp_path, monkeypatch):
    fp, _, batch = scoring_jobs(
        tmp_path, monkeypatch, ("ss_flow_cell", "ss_flow_noproj"), "--gpus", "4", "--flow-quality-args=--x0-estimate",
        "--flow-quality-extra", "flow_quality_cell_train=flow_quality_cell:--split=train;--max-chunks=12",
        "--flow-quality-extra", "flow_quality_tex_train=flow_quality_tex:--split=train")
    batches = [batch]
    jobs = {j.name: j for j in batches[0]}
    # No texture family was scored, so its extra is skipped; the cell family's extra gets the next GPU.
    assert sorted(jobs) == ["flow_quality_cell", "flow_quality_cell_train"]
    assert [j.gpu for j in batches[0]] == [0, 1]
    base, extra = jobs["flow_quality_cell"].argv, jobs["flow_quality_cell_train"].argv
    for flag in ("--ss-flow", "--ss-flow-ablation", "--ss-vae"):
        assert extra[extra.index(flag) + 1] == base[base.index(flag) + 1]
    assert extra[extra.index("--out") + 1].endswith("flow_quality_cell_train.json")
    assert extra[-3:] == ["--x0-estimate", "--split=train", "--max-chunks=12"]  # after the shared arguments
    assert "--split=train" not in base
    for bad in ("x=flow_quality_cell:--split=train", "flow_quality_a=flow_quality_cell", "flow_quality_a"):
        with pytest.raises(SystemExit, match="flow-quality-extra"):
            fp.parse_scoring_extras([bad])


def test_visibility_runs_share_the_gpus_equally_with_the_texture_flow_and_are_scored_in_their_own_families(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(
        tmp_path, monkeypatch, "--flows", "tex_flow", "tex_flow_aux", "tex_flow_vis", "tex_flow_visphoto")
    by_name = {j.name: j for j in batches[0]}
    # one family, four runs on two GPUs: two a GPU
    assert {n: j.gpu for n, j in by_name.items()} == {"tex_flow": 0, "tex_flow_aux": 1, "tex_flow_vis": 0,
                                                      "tex_flow_visphoto": 1}
    vis, visphoto = by_name["tex_flow_vis"].argv, by_name["tex_flow_visphoto"].argv
    # tex_flow_vis is tex_flow_aux plus visibility; visphoto adds the photo cue at 2 sub-points per edge.
    assert fp.LATENT_AUX in vis and fp.VISIBILITY in vis and fp.VIS_PHOTO_CUE not in vis
    assert all(x in visphoto for x in (fp.LATENT_AUX, fp.VISIBILITY, fp.VIS_PHOTO_CUE))
    assert "subdivisions:2" in fp.VIS_PHOTO_CUE
    assert fp.VISIBILITY not in by_name["tex_flow_aux"].argv
    pipe.flow_quality()
    names = {j.name: j.argv for j in batches[1]}
    assert sorted(names) == ["flow_quality", "flow_quality_aux", "flow_quality_vis", "flow_quality_visphoto"]
    for family, run in (("flow_quality_vis", "tex_flow_vis"), ("flow_quality_visphoto", "tex_flow_visphoto")):
        argv = names[family]
        assert argv[argv.index("--tex-flow") + 1] == str(pipe.ckpt(run))
        assert "--ss-flow" not in argv and "--shape-flow" not in argv


def test_view_pretraining_runs_beside_the_vaes_and_the_pre_flows_load_it(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "1", "--phases", "vae", "flow", "flow_quality",
                          "--view-pretrain-minutes", "3", "--view-pretrain-args", "stage.datamodule.batch_size=64",
                          "--flows", "ss_flow_pre", "tex_flow_vis", "tex_flow_pre", "tex_flow_cell"])
    pipe, batches = flow_phase(fp, args, monkeypatch)
    pipe.vae()
    vae_jobs = {j.name: j.argv for j in batches[1]}
    assert sorted(vae_jobs) == ["shape_vae", "ss_vae", "tex_vae", "view_pretrain"]
    pretrain = vae_jobs["view_pretrain"]
    assert "stage=view_pretrain" in pretrain and "stage.datamodule.batch_size=64" in pretrain
    assert "+trainer.max_time=00:00:03:00" in pretrain
    by_name = {j.name: j.argv for j in batches[0]}
    init = f"stage.module.image_encoder_ckpt={pipe.ckpt('view_pretrain')}"
    for run in ("ss_flow_pre", "tex_flow_pre"):
        assert all(x in by_name[run] for x in (init, fp.FROZEN_ENCODER, fp.DEPTH_CUE)), run
    assert fp.OCC_AUX in by_name["ss_flow_pre"] and fp.VISIBILITY in by_name["tex_flow_pre"]
    assert init not in by_name["tex_flow_vis"]  # the same-run baseline: visibility, no pretraining
    # The cell-cue run is its *_pre run plus the cue.
    assert [x for x in by_name["tex_flow_cell"] if x not in by_name["tex_flow_pre"]] == [fp.CELL_CUE]
    pipe.flow_quality()
    names = {j.name: j.argv for j in batches[-1]}
    assert sorted(names) == ["flow_quality_cell", "flow_quality_pre", "flow_quality_vis"]
    argv = names["flow_quality_pre"]
    assert argv[argv.index("--ss-flow") + 1] == str(pipe.ckpt("ss_flow_pre"))
    assert argv[argv.index("--tex-flow") + 1] == str(pipe.ckpt("tex_flow_pre"))
    argv = names["flow_quality_cell"]
    assert argv[argv.index("--tex-flow") + 1] == str(pipe.ckpt("tex_flow_cell")) and "--ss-flow" not in argv


def test_the_pre_ss_flow_is_ablated_with_the_same_encoder_and_scored_against_that_ablation(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(
        tmp_path, monkeypatch, "--flows", "ss_flow_pre", "ss_flow_pre_noproj", "--place", "ss_flow_pre_noproj=1")
    by_name = {j.name: j for j in batches[0]}
    pre, ablation = by_name["ss_flow_pre"].argv, by_name["ss_flow_pre_noproj"].argv
    init = f"stage.module.image_encoder_ckpt={pipe.ckpt('view_pretrain')}"
    assert init in ablation and fp.FROZEN_ENCODER in ablation and "stage.module.projection_conditioning=false" in ablation
    # what reads the projection is not in the ablation; everything else is shared
    assert fp.OCC_AUX not in ablation and fp.DEPTH_CUE not in ablation
    assert set(ablation) - set(pre) == {"stage.module.projection_conditioning=false"}
    assert by_name["ss_flow_pre_noproj"].gpu == 1
    pipe.flow_quality()
    argv = {j.name: j.argv for j in batches[-1]}["flow_quality_pre"]
    assert argv[argv.index("--ss-flow-ablation") + 1] == str(pipe.ckpt("ss_flow_pre_noproj"))


def test_the_cell_ss_flow_is_scored_against_the_fair_ablation_when_it_was_trained(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(
        tmp_path, monkeypatch, "--flows", "ss_flow_cell", "ss_flow_pre_noproj", "--place", "ss_flow_pre_noproj=1")
    assert sorted(j.name for j in batches[0]) == ["ss_flow_cell", "ss_flow_pre_noproj"]
    pipe.flow_quality()
    jobs = {j.name: j.argv for j in batches[-1]}
    argv = jobs["flow_quality_cell"]
    assert argv[argv.index("--ss-flow") + 1] == str(pipe.ckpt("ss_flow_cell"))
    assert argv[argv.index("--ss-flow-ablation") + 1] == str(pipe.ckpt("ss_flow_pre_noproj"))


def test_place_moves_jobs_and_a_job_on_several_gpus_trains_ddp(tmp_path, monkeypatch):
    """On a 4-GPU machine each VAE and the pretraining take a GPU of their own, and the texture flow runs DDP over
    three GPUs while the SS flow has the fourth: the job sees exactly its GPUs and asks for the DDP hardware."""
    import sys

    import pytest

    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "4", "--phases", "vae", "flow",
                          "--view-pretrain-minutes", "3", "--flows", "ss_flow_pre", "tex_flow_pre",
                          "--place", "ss_vae=0", "--place", "shape_vae=1", "--place", "tex_vae=2",
                          "--place", "view_pretrain=3", "--place", "tex_flow_pre=0,1,2", "--place", "ss_flow_pre=3"])
    pipe, batches = flow_phase(fp, args, monkeypatch)
    pipe.vae()
    flows = {j.name: j for j in batches[0]}
    vaes = {j.name: j for j in batches[1]}
    assert {n: j.gpu for n, j in vaes.items()} == {"ss_vae": 0, "shape_vae": 1, "tex_vae": 2, "view_pretrain": 3}
    assert all("hardware=gpu" in j.argv for j in vaes.values())
    assert flows["tex_flow_pre"].gpu == (0, 1, 2) and flows["ss_flow_pre"].gpu == 3
    assert "hardware=gpu_ddp" in flows["tex_flow_pre"].argv and "hardware=gpu" not in flows["tex_flow_pre"].argv
    assert "hardware=gpu" in flows["ss_flow_pre"].argv

    # The runner hands a job exactly its GPUs.
    monkeypatch.undo()
    monkeypatch.delenv("MASTER_PORT", raising=False)
    show = [sys.executable, "-c", "import os; print('visible', os.environ['CUDA_VISIBLE_DEVICES'], "
            "'port', os.environ.get('MASTER_PORT'))"]
    codes = pipe.run([fp.Job("ddp_job", show, gpu=(0, 1)), fp.Job("ddp_two", show, gpu=(2, 3)),
                      fp.Job("one", show, gpu=3)])
    assert codes == {"ddp_job": 0, "ddp_two": 0, "one": 0}
    logs = {n: (pipe.results / f"{n}.log").read_text() for n in codes}
    assert "visible 0,1 port" in logs["ddp_job"] and "visible 2,3 port" in logs["ddp_two"]
    assert "visible 3 port None" in logs["one"]  # one GPU: no rendezvous
    ports = [logs[n].split("port ")[-1].split()[0] for n in ("ddp_job", "ddp_two")]
    assert ports[0] != ports[1]  # two DDP jobs side by side never share a rendezvous port

    # On the CPU dry run several "GPUs" become DDP processes.
    cpu = fp.Pipeline(fp.parse_args(["--root", str(tmp_path / "cpu"), "--cpu", "--place", "tex_flow=0,1"]))
    argv = cpu.train_args("tex_flow", 1.0, [], devices=2)
    assert "trainer.devices=2" in argv and "+trainer.strategy=ddp" in argv and "hardware=cpu" in argv

    for bad in ("tex_flow_pre", "tex_flow_pre=", "tex_flow_pre=a", "tex_flow_pre=0,0", "=1"):
        with pytest.raises(SystemExit, match="--place"):
            fp.parse_placement([bad])


def test_a_deadline_shortens_the_flows_to_leave_time_for_scoring(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "1", "--phases", "flow", "--flows", "tex_flow",
                          "--flow-minutes", "12", "--deadline-minutes", "25", "--reserve-minutes", "3"])
    pipe, _ = flow_phase(fp, args, monkeypatch)  # at once: the full 12 minutes fit
    assert pipe.flow_budget() == 12
    pipe.t0 -= 15 * 60  # the data phases took 15 minutes: 25 - 15 - 3 = 7 left
    batches = []
    monkeypatch.setattr(pipe, "run", lambda jobs: batches.append(jobs) or {j.name: 0 for j in jobs})
    pipe.flow()
    assert "+trainer.max_time=00:00:07:00" in batches[0][0].argv
    assert "deadline" in (pipe.results / "progress.log").read_text()
    pipe.t0 -= 6.5 * 60  # half a minute left for training: not worth starting
    pipe.flow()
    assert len(batches) == 1 and "flow: skipped" in (pipe.results / "progress.log").read_text()


def test_detached_jobs_run_beside_the_encoding_and_the_next_phase_waits_for_them(tmp_path, monkeypatch):
    """The view pretraining outlasts the VAEs: the encoding starts beside it, and the flow phase waits for it."""
    import json
    import sys
    import time

    fp = load_script("benchmarks/full_pipeline.py")
    pipe = fp.Pipeline(fp.parse_args(["--root", str(tmp_path), "--cpu", "--phases", "vae", "encode", "flow"]))
    encoded = tmp_path / "encoded"
    # The "pretraining" can only succeed if the encoding runs while it does (it gives up after 30 s, rc 3).
    waiter = [sys.executable, "-c", "import pathlib, sys, time\nfor _ in range(600):\n"
              f"    if pathlib.Path({str(encoded)!r}).exists(): print('saw the encoding'); sys.exit(0)\n"
              "    time.sleep(0.05)\nsys.exit(3)"]
    order = []

    def vae():
        codes = pipe.run([fp.Job("ss_vae", [sys.executable, "-c", "pass"]), fp.Job("view_pretrain", waiter)],
                         detach=("view_pretrain",))
        order.append(("vae", sorted(codes)))

    def encode():
        order.append(("encode", [r.job.name for r in pipe.pending]))
        time.sleep(0.3)  # the "pretraining" is still polling
        encoded.touch()
        order.append(time.time() - pipe.t0)
        time.sleep(1.0)  # the "pretraining" ends now, but is reaped only after this phase

    monkeypatch.setattr(pipe, "vae", vae)
    monkeypatch.setattr(pipe, "encode", encode)
    monkeypatch.setattr(pipe, "flow", lambda: order.append(("flow", [r.job.name for r in pipe.pending])))
    pipe.main()
    touched = order.pop(2)
    assert order == [("vae", ["ss_vae"]), ("encode", ["view_pretrain"]), ("flow", [])]
    done = {d["job"]: d for d in map(json.loads, (pipe.results / "progress.jsonl").read_text().splitlines())}
    assert {name: d["rc"] for name, d in done.items()} == {"ss_vae": 0, "view_pretrain": 0}
    # Its own end (the record has 0.1 s resolution), not when it was reaped a second later.
    assert touched - 0.06 < done["view_pretrain"]["end_s"] < touched + 0.8
    assert "saw the encoding" in (pipe.results / "view_pretrain.log").read_text()
    assert (pipe.results / "DONE").is_file()


def test_nofloor_runs_are_their_base_run_without_the_floor_and_are_scored_against_it(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(
        tmp_path, monkeypatch, "--flows", "tex_flow", "tex_flow_nofloor", "tex_flow_pre", "tex_flow_pre_nofloor")
    by_name = {j.name: j.argv for j in batches[0]}
    for base, ablation in (("tex_flow", "tex_flow_nofloor"), ("tex_flow_pre", "tex_flow_pre_nofloor")):
        assert [x for x in by_name[ablation] if x not in by_name[base]] == [fp.NO_FLOOR]
        assert fp.NO_FLOOR not in by_name[base]  # the base runs keep the config's floor
    pipe.flow_quality()
    scored = {j.name: j.argv[j.argv.index("--tex-flow") + 1] for j in batches[-1]}
    assert scored == {name: str(pipe.ckpt(run)) for name, run in (
        ("flow_quality", "tex_flow"), ("flow_quality_nofloor", "tex_flow_nofloor"),
        ("flow_quality_pre", "tex_flow_pre"), ("flow_quality_pre_nofloor", "tex_flow_pre_nofloor"))}


def test_patch2_runs_are_tex_flow_pre_on_blocks_and_are_scored_beside_it(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(tmp_path, monkeypatch, "--flows", "tex_flow_pre", "tex_flow_pre_patch2",
                                      "tex_flow_pre_patch2_b16", "--flow-batch", "8")
    by_name = {j.name: j.argv for j in batches[0]}
    assert [x for x in by_name["tex_flow_pre_patch2"] if x not in by_name["tex_flow_pre"]] == [fp.PATCH2]
    b16 = by_name["tex_flow_pre_patch2_b16"]
    assert [x for x in b16 if x not in by_name["tex_flow_pre"]] == [fp.PATCH2, fp.BATCH16]
    # Its own batch size comes last: it wins over --flow-batch.
    assert [x for x in b16 if x.startswith("stage.datamodule.batch_size=")][-1] == fp.BATCH16
    pipe.flow_quality()
    scored = {j.name: j.argv[j.argv.index("--tex-flow") + 1] for j in batches[-1]}
    assert scored == {"flow_quality_pre": str(pipe.ckpt("tex_flow_pre")),
                      "flow_quality_pre_patch2": str(pipe.ckpt("tex_flow_pre_patch2")),
                      "flow_quality_pre_patch2_b16": str(pipe.ckpt("tex_flow_pre_patch2_b16"))}


def test_flows_log_every_step_and_their_speed_is_summarised(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "flow", "--flows", "tex_flow_pre",
                          "tex_flow_pre_patch2"])
    pipe = fp.Pipeline(args)
    batches = []

    def fake_run(jobs, detach=()):
        batches.append(jobs)
        for job in jobs:  # each "training" run leaves rank 0's step log where RunStats writes it
            if job.name.startswith("tex_flow"):
                log = pipe.runs / job.name / "rank_0_steps.jsonl"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text("".join(f'{{"step": {s}, "time": {s / 2}}}\n' for s in range(1, 200)))
        return {job.name: 0 for job in jobs}

    monkeypatch.setattr(pipe, "run", fake_run)
    pipe.flow()
    train, summary = batches
    assert all("callbacks.run_stats.step_log=true" in job.argv for job in train)
    for run in ("tex_flow_pre", "tex_flow_pre_patch2"):
        assert (pipe.results / f"steps_{run}.jsonl").read_text().count("\n") == 199
    (job,) = summary
    assert job.name == "step_rate" and job.gpu is None
    assert [a for a in job.argv if a.endswith(".jsonl")] == [
        str(pipe.results / "steps_tex_flow_pre.jsonl"), str(pipe.results / "steps_tex_flow_pre_patch2.jsonl")]
    assert job.argv[job.argv.index("--plot") + 1] == str(pipe.results / "step_rate.png")
    # The summary job runs the real script on those logs.
    report = load_script("benchmarks/step_rate.py").main(job.argv[2:])
    assert report["runs"]["tex_flow_pre"]["steady_rate"] == pytest.approx(2.0)


LOGIT_NORMAL = "stage.module.objective.t_schedule=logit_normal"


def test_a_flow_variant_trains_as_its_base_plus_its_overrides_and_is_scored_in_its_own_family(tmp_path, monkeypatch):
    fp, pipe, batches = two_gpu_flows(
        tmp_path, monkeypatch, "--flows", "tex_flow_pre", "--place", "tex_flow_pre=0", "--place", "tex_flow_pre_ln=1",
        "--flow-variant", f"tex_flow_pre_ln=tex_flow_pre:{LOGIT_NORMAL};stage.module.objective.mean=0.5",
        "--flow-args", "stage.module.lr=3e-4")
    by_name = {j.name: j for j in batches[0]}
    assert {n: j.gpu for n, j in by_name.items()} == {"tex_flow_pre": 0, "tex_flow_pre_ln": 1}
    base, variant = by_name["tex_flow_pre"].argv, by_name["tex_flow_pre_ln"].argv
    # The base's own switches and the common --flow-args, then the variant's overrides last (they win).
    assert set(base) <= set(variant)
    assert variant[-2:] == [LOGIT_NORMAL, "stage.module.objective.mean=0.5"]
    assert [x for x in variant if x not in base] == [LOGIT_NORMAL, "stage.module.objective.mean=0.5"]
    assert "stage.module.lr=3e-4" in variant and by_name["tex_flow_pre_ln"].env["GENRECON_RUN_NAME"] == "tex_flow_pre_ln"
    pipe.flow_quality()
    scored = {j.name: j.argv[j.argv.index("--tex-flow") + 1] for j in batches[-1]}
    assert scored == {"flow_quality_pre": str(pipe.ckpt("tex_flow_pre")),
                      "flow_quality_pre_ln": str(pipe.ckpt("tex_flow_pre_ln"))}


@pytest.mark.parametrize("entry, problem", [
    ("tex_flow_pre_ln", "expected NAME=BASE"),
    ("tex_flow_pre_ln=tex_flow_pre", "expected NAME=BASE"),
    ("tex_flow_ln=tex_flow_nope:a=1", "is not a flow run"),
    ("ss_flow_ln=tex_flow_pre:a=1", "must start with its base's stage"),
    ("tex_flow_pre=tex_flow:a=1", "is taken"),
])
def test_a_malformed_flow_variant_is_refused_naming_the_entry(entry, problem):
    fp = load_script("benchmarks/full_pipeline.py")
    with pytest.raises(SystemExit, match=problem) as err:
        fp.parse_flow_variants([entry])
    assert entry in str(err.value)


def test_the_flows_start_while_the_vae_scoring_goes_on_and_the_scoring_phase_waits_for_it(tmp_path, monkeypatch):
    """vae_quality only reads checkpoints: the flow phase starts beside it (session 14 waited 45 s for it), the
    flow_quality phase after it joins it."""
    import sys

    fp = load_script("benchmarks/full_pipeline.py")
    pipe = fp.Pipeline(fp.parse_args(["--root", str(tmp_path), "--cpu", "--phases", "encode", "flow", "flow_quality"]))
    gate = tmp_path / "flows_started"
    # The "scoring" ends only once the flows have started (it gives up after 30 s, rc 3).
    waiter = [sys.executable, "-c", "import pathlib, sys, time\nfor _ in range(600):\n"
              f"    if pathlib.Path({str(gate)!r}).exists(): sys.exit(0)\n    time.sleep(0.05)\nsys.exit(3)"]
    order = []
    monkeypatch.setattr(pipe, "encode", lambda: pipe.run([fp.Job("encode", [sys.executable, "-c", "pass"]),
                                                          fp.Job("vae_quality", waiter)], detach=("vae_quality",)))
    monkeypatch.setattr(pipe, "flow", lambda: order.append(("flow", [r.job.name for r in pipe.pending]))
                        or gate.touch())
    monkeypatch.setattr(pipe, "flow_quality", lambda: order.append(("flow_quality", [r.job.name for r in pipe.pending])))
    pipe.main()
    assert order == [("flow", ["vae_quality"]), ("flow_quality", [])]
    assert '"job": "vae_quality", "rc": 0' in (pipe.results / "progress.jsonl").read_text()


def test_a_run_of_ss_flows_only_trains_encodes_and_scores_with_the_ss_vae_alone(tmp_path, monkeypatch):
    """``--vaes ss_vae --flows`` (nothing) with two SS variants: the one-call form of an SS-flow A/B, where the
    shape and texture VAEs would only take GPU time; nothing asks for their checkpoints afterwards."""
    fp = load_script("benchmarks/full_pipeline.py")
    pvb = "ss_flow_cell_pvb=ss_flow_cell:stage.module.point_depth={block_keep:0.0}"
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "vae", "encode", "flow", "flow_quality",
                          "--vaes", "ss_vae", "--view-pretrain-minutes", "2", "--flows",
                          "--flow-variant", "ss_flow_cell_pvs=ss_flow_cell:a=1", "--flow-variant", pvb,
                          "--place", "ss_flow_cell_pvs=0", "--place", "ss_flow_cell_pvb=1"])
    pipe, batches = flow_phase(fp, args, monkeypatch)
    assert {j.name: j.gpu for j in batches[0]} == {"ss_flow_cell_pvs": 0, "ss_flow_cell_pvb": 1}
    n = len(batches)
    pipe.vae()
    assert sorted(j.name for j in batches[n]) == ["ss_vae", "view_pretrain"]
    pipe.encode()
    jobs = {j.name: j.argv for j in batches[-1]}
    assert f"encode.ss_vae_ckpt={pipe.ckpt('ss_vae')}" in jobs["encode"]
    assert not any(x.startswith(("encode.shape_vae_ckpt", "encode.tex_vae_ckpt")) for x in jobs["encode"])
    assert jobs["vae_quality"][jobs["vae_quality"].index("--ss-vae") + 1] == str(pipe.ckpt("ss_vae"))
    assert "--shape-vae" not in jobs["vae_quality"] and "--tex-vae" not in jobs["vae_quality"]
    pipe.flow_quality()
    scored = {j.name: j.argv for j in batches[-1]}
    assert sorted(scored) == ["flow_quality_cell_pvb", "flow_quality_cell_pvs"]
    for name, argv in scored.items():
        assert argv[argv.index("--ss-vae") + 1] == str(pipe.ckpt("ss_vae")) and "--tex-vae" not in argv, name
    assert scored["flow_quality_cell_pvb"][scored["flow_quality_cell_pvb"].index("--ss-flow") + 1] == str(
        pipe.ckpt("ss_flow_cell_pvb"))


@pytest.mark.parametrize("argv, problem", [
    (["--vaes", "ss_vae", "--flows", "tex_flow_pre"], "flow run tex_flow_pre needs the latents of shape_vae, tex_vae"),
    (["--vaes", "ss_vae", "shape_vae", "--flows", "ss_flow", "--flow-variant", "tex_flow_x=tex_flow:a=1"],
     "flow run tex_flow_x needs the latents of tex_vae"),
    (["--vaes", "shape_vae", "--flows", "ss_flow_cell"], "flow run ss_flow_cell needs the latents of ss_vae"),
    (["--vaes", "ss_vae", "tex_vae", "--flows"], "tex_vae needs shape_vae"),
    (["--vaes", "ss_vae", "--flows", "--tex-vae-extend-minutes", "2"], "--tex-vae-extend-minutes and"),
])
def test_vaes_that_a_flow_run_needs_cannot_be_left_out(tmp_path, capsys, argv, problem):
    fp = load_script("benchmarks/full_pipeline.py")
    with pytest.raises(SystemExit):
        fp.parse_args(["--root", str(tmp_path), *argv])
    assert problem in capsys.readouterr().err


def test_resumed_flows_continue_from_their_checkpoint_for_the_total_budget(tmp_path, monkeypatch):
    """A second call with ``--resume-flows`` on a machine that kept ``--root``: each flow loads its last checkpoint
    and trains for the time its timer saved plus this call's minutes, the decay refitted; a new arm starts fresh."""
    import torch

    fp = load_script("benchmarks/full_pipeline.py")
    first = ["--root", str(tmp_path), "--gpus", "1", "--phases", "flow", "--flows", "--flow-variant",
             "ss_flow_cell_a=ss_flow_cell:a=1", "--flow-minutes", "3"]
    pipe, batches = flow_phase(fp, fp.parse_args(first), monkeypatch)
    assert "+trainer.max_time=00:00:03:00" in batches[0][0].argv
    assert not any(x.startswith("ckpt_path=") for x in batches[0][0].argv)
    # the timer overshot its 3 minutes (it is checked between steps): the resumed budget counts what was spent
    torch.save({"callbacks": {"Timer": {"time_elapsed": {"train": 200.0, "validate": 50.0}}}}, pipe.ckpt(
        "ss_flow_cell_a"))
    second = [*first[:-1], "7", "--resume-flows", "--flow-variant", "ss_flow_cell_b=ss_flow_cell:b=1"]
    pipe = fp.Pipeline(fp.parse_args(second))
    batches = []
    monkeypatch.setattr(pipe, "run", lambda jobs, detach=(): batches.append(jobs) or {j.name: 0 for j in jobs})
    pipe.flow()
    jobs = {j.name: j.argv for j in batches[0]}
    assert f"ckpt_path={pipe.ckpt('ss_flow_cell_a')}" in jobs["ss_flow_cell_a"]
    assert "+callbacks.time_budget.refit_on_resume=true" in jobs["ss_flow_cell_a"]
    assert "+trainer.max_time=00:00:10:18" in jobs["ss_flow_cell_a"]  # 3.3 + 7 minutes
    assert "+trainer.max_time=00:00:07:00" in jobs["ss_flow_cell_b"]
    assert not any(x.startswith("ckpt_path=") for x in jobs["ss_flow_cell_b"])
    assert "ss_flow_cell_a: resumes after 3.3 min" in (pipe.results / "progress.log").read_text()
    horizon = fp.Pipeline(fp.parse_args([*second, "--flow-horizon-minutes", "20"]))
    monkeypatch.setattr(horizon, "run", lambda jobs, detach=(): batches.append(jobs) or {j.name: 0 for j in jobs})
    horizon.flow()
    assert all("+callbacks.time_budget.horizon_minutes=20.0" in j.argv for j in batches[-1])
    torch.save({"callbacks": {}}, pipe.ckpt("ss_flow_cell_a"))
    with pytest.raises(SystemExit, match="has no Timer state"):
        pipe.flow()


def test_resume_skips_the_phases_an_earlier_call_finished_and_reruns_a_failed_one(tmp_path, monkeypatch):
    """Real subprocesses: the first call's prepare and vae succeed (their detached job too) and leave markers, its
    encode fails and leaves none; the second call with ``--resume`` runs only encode and the flows (resumed)."""
    import sys

    fp = load_script("benchmarks/full_pipeline.py")
    argv = ["--root", str(tmp_path), "--cpu", "--phases", "prepare", "vae", "encode", "flow", "--flows"]
    calls = []

    def phases(pipe, encode_rc):
        ok, fail = [sys.executable, "-c", "pass"], [sys.executable, "-c", f"raise SystemExit({encode_rc})"]
        monkeypatch.setattr(pipe, "prepare", lambda: calls.append("prepare") or pipe.run([fp.Job("prep", ok)]))
        monkeypatch.setattr(pipe, "vae", lambda: calls.append("vae") or pipe.run(
            [fp.Job("ss_vae", ok), fp.Job("view_pretrain", ok)], detach=("view_pretrain",)))
        monkeypatch.setattr(pipe, "encode", lambda: calls.append("encode") or pipe.run([fp.Job("encode", fail)]))
        monkeypatch.setattr(pipe, "flow", lambda: calls.append(("flow", pipe.args.resume_flows)))
        return pipe

    phases(fp.Pipeline(fp.parse_args(argv)), encode_rc=1).main()
    assert calls == ["prepare", "vae", "encode", ("flow", False)]
    assert sorted(p.name for p in (tmp_path / "phases").iterdir()) == ["prepare.done", "vae.done"]
    calls.clear()
    phases(fp.Pipeline(fp.parse_args([*argv, "--resume"])), encode_rc=0).main()
    assert calls == ["encode", ("flow", True)]
    assert (tmp_path / "phases" / "encode.done").is_file() and not (tmp_path / "phases" / "flow.done").exists()
    assert "=== vae: done by an earlier call" in (tmp_path / "results" / "progress.log").read_text()


def test_val_items_keep_the_held_out_rooms_as_the_dataset_grows(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    for extra, expected in (([], None), (["--val-items", "144:160"], "dataset.val_items='144:160'")):
        pipe = fp.Pipeline(fp.parse_args(["--root", str(tmp_path), "--gpus", "1", "--scenes", "320", *extra]))
        batches = []
        monkeypatch.setattr(pipe, "run", lambda jobs, detach=(): batches.append(jobs) or {j.name: 0 for j in jobs})
        pipe.prepare()
        argv = {j.name: j.argv for j in batches[0]}["prepare"]
        assert "dataset.num_scenes=320" in argv
        assert [x for x in argv if x.startswith("dataset.val_items")] == ([expected] if expected else [])


def test_an_ss_vae_variant_feeds_a_flow_variant_that_trains_and_is_scored_on_its_latents(tmp_path, monkeypatch):
    """``--ss-vae-variant``: an SS-VAE A/B through the flow it feeds. The variant trains beside the main SS VAE
    with the main one's arguments plus its own (and its own minutes), the encoding writes its latents to a folder
    of their own, and a flow variant with ``ss_vae=NAME`` trains and is scored on them and decoded by that VAE
    while the base flow keeps the main latents."""
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args([
        "--root", str(tmp_path), "--gpus", "2", "--phases", "vae", "encode", "flow", "flow_quality",
        "--vaes", "ss_vae", "--vae-minutes", "3", "--ss-vae-args", "stage.module.lr=1e-3",
        "--ss-vae-variant", "short", "minutes=1.5", "seed=4", "--flows", "ss_flow_cell",
        "--flow-variant", "ss_flow_cell_short=ss_flow_cell:ss_vae=short;a=1",
        "--place", "ss_flow_cell=0", "--place", "ss_flow_cell_short=1"])
    pipe, batches = flow_phase(fp, args, monkeypatch)
    latents = pipe.dataset / "latents_ss_vae_short"
    flows = {j.name: j.argv for j in batches[0]}
    main, variant = flows["ss_flow_cell"], flows["ss_flow_cell_short"]
    assert f"stage.module.ss_vae_ckpt={pipe.ckpt('ss_vae')}" in main
    assert not any(x.startswith("stage.datamodule.shards=") or "latents_ss_vae" in x for x in main)
    # The variant's VAE, latents and their statistics come after the main SS VAE's (the last override wins).
    own = variant.index(f"stage.module.ss_vae_ckpt={pipe.ckpt('ss_vae_short')}")
    assert variant.index(f"stage.module.ss_vae_ckpt={pipe.ckpt('ss_vae')}") < own
    assert variant[own + 1:own + 4] == [f"stage.datamodule.shards={latents}",
                                        f"stage.module.latent_stats={latents / 'stats.json'}", "a=1"]
    assert "ss_vae=short" not in variant

    n = len(batches)
    pipe.vae()
    vaes = {j.name: j for j in batches[n]}
    assert {name: j.gpu for name, j in vaes.items()} == {"ss_vae": 0, "ss_vae_short": 1}
    short = vaes["ss_vae_short"].argv
    assert "stage=ss_vae" in short and "stage.module.lr=1e-3" in short and "seed=4" in short
    assert "+trainer.max_time=00:00:01:30" in short and "+trainer.max_time=00:00:03:00" in vaes["ss_vae"].argv
    assert "seed=4" not in vaes["ss_vae"].argv and not any(x.startswith("minutes=") for x in short)
    assert vaes["ss_vae_short"].env["GENRECON_RUN_NAME"] == "ss_vae_short"

    pipe.encode()
    jobs = {j.name: j for j in batches[-1]}
    assert sorted(jobs) == ["encode", "encode_ss_vae_short", "vae_quality", "vae_quality_ss_vae_short"]
    assert f"encode.ss_vae_ckpt={pipe.ckpt('ss_vae_short')}" in jobs["encode_ss_vae_short"].argv
    assert "encode.out_dir=latents_ss_vae_short" in jobs["encode_ss_vae_short"].argv
    assert not any(x.startswith("encode.out_dir") for x in jobs["encode"].argv)
    assert jobs["encode"].gpu == 0 and jobs["encode_ss_vae_short"].gpu == 1
    quality = jobs["vae_quality_ss_vae_short"].argv
    assert quality[quality.index("--ss-vae") + 1] == str(pipe.ckpt("ss_vae_short"))

    pipe.flow_quality()
    scored = {j.name: j.argv for j in batches[-1]}
    value = lambda argv, flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert sorted(scored) == ["flow_quality_cell", "flow_quality_cell_short"]
    assert value(scored["flow_quality_cell"], "--latents") == str(pipe.dataset / "latents")
    assert value(scored["flow_quality_cell"], "--ss-vae") == str(pipe.ckpt("ss_vae"))
    assert value(scored["flow_quality_cell_short"], "--latents") == str(latents)
    assert value(scored["flow_quality_cell_short"], "--ss-vae") == str(pipe.ckpt("ss_vae_short"))
    assert value(scored["flow_quality_cell_short"], "--ss-flow") == str(pipe.ckpt("ss_flow_cell_short"))


@pytest.mark.parametrize("argv, problem", [
    (["--vaes", "shape_vae", "--flows", "--ss-vae-variant", "short"], "--ss-vae-variant needs ss_vae"),
    (["--vaes", "ss_vae", "--flows", "ss_flow_cell", "--ss-vae-variant", "short",
      "--flow-variant", "ss_flow_cell_x=ss_flow_cell:ss_vae=long"],
     "ss_vae=long names no --ss-vae-variant (short)"),
    (["--ss-vae-variant", "short", "--flow-variant", "tex_flow_x=tex_flow:ss_vae=short"], "for SS flows only"),
])
def test_a_flow_bound_to_a_missing_or_foreign_ss_vae_is_refused(tmp_path, capsys, argv, problem):
    fp = load_script("benchmarks/full_pipeline.py")
    with pytest.raises(SystemExit):
        fp.parse_args(["--root", str(tmp_path), *argv])
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize("entry, problem", [
    (["9lives"], "NAME must be a new identifier"),
    (["short", "minutes=soon"], "'minutes=soon' is not minutes=NUMBER"),
])
def test_a_malformed_ss_vae_variant_is_refused_naming_it(entry, problem):
    fp = load_script("benchmarks/full_pipeline.py")
    with pytest.raises(SystemExit, match=problem):
        fp.parse_ss_vae_variants([entry], 3.0)
    with pytest.raises(SystemExit, match="NAME must be a new identifier"):
        fp.parse_ss_vae_variants([["a"], ["a", "seed=1"]], 3.0)
    parsed = fp.parse_ss_vae_variants([["a", "minutes=2", "x=1"], ["b"]], 3.0)
    assert parsed == {"a": (2.0, ["x=1"]), "b": (3.0, [])}


def test_a_view_pretrain_variant_feeds_a_flow_variant_that_loads_its_encoder(tmp_path, monkeypatch):
    """``--view-pretrain-variant``: a view-encoder A/B through the flow it feeds. The variant pretrains beside the
    main pretraining (detached like it) with the main one's arguments plus its own, and a flow variant with
    ``view_pretrain=NAME`` loads its checkpoint and its encoder architecture after the base run's encoder."""
    fp = load_script("benchmarks/full_pipeline.py")
    geometry = "preset.image_encoder.geometry_channels=2"
    args = fp.parse_args([
        "--root", str(tmp_path), "--gpus", "1", "--phases", "vae", "flow", "--vaes", "ss_vae",
        "--view-pretrain-minutes", "3", "--view-pretrain-args", "stage.datamodule.batch_size=256",
        "--view-pretrain-variant", "floor", "minutes=2", geometry, "seed=5", "--flows", "ss_flow_cell",
        "--flow-variant", "ss_flow_cell_floor=ss_flow_cell:view_pretrain=floor;a=1"])
    pipe, batches = flow_phase(fp, args, monkeypatch)
    flows = {j.name: j.argv for j in batches[0]}
    main, variant = flows["ss_flow_cell"], flows["ss_flow_cell_floor"]
    main_encoder = f"stage.module.image_encoder_ckpt={pipe.ckpt('view_pretrain')}"
    assert main_encoder in main and geometry not in main
    own = variant.index(f"stage.module.image_encoder_ckpt={pipe.ckpt('view_pretrain_floor')}")
    assert variant.index(main_encoder) < own and variant[own + 1:own + 3] == [geometry, "a=1"]
    assert "view_pretrain=floor" not in variant and "seed=5" not in variant

    detached, n = [], len(batches)
    monkeypatch.setattr(pipe, "run", lambda jobs, detach=(): (batches.append(jobs), detached.extend(detach)) and {})
    pipe.vae()
    jobs = {j.name: j for j in batches[n]}
    assert sorted(jobs) == ["ss_vae", "view_pretrain", "view_pretrain_floor"]
    assert set(detached) == {"view_pretrain", "view_pretrain_floor"}
    floor = jobs["view_pretrain_floor"]
    assert "stage=view_pretrain" in floor.argv and "stage.datamodule.batch_size=256" in floor.argv
    assert geometry in floor.argv and "seed=5" in floor.argv and "+trainer.max_time=00:00:02:00" in floor.argv
    main = jobs["view_pretrain"].argv
    assert geometry not in main and "+trainer.max_time=00:00:03:00" in main
    assert floor.gpu == jobs["view_pretrain"].gpu and floor.env["GENRECON_RUN_NAME"] == "view_pretrain_floor"


def test_every_encoder_run_loads_the_pretrained_encoder(tmp_path, monkeypatch):
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args(["--root", str(tmp_path), "--gpus", "2", "--phases", "flow",
                          "--view-pretrain-minutes", "1", "--flows", *fp.ENCODER_RUNS])
    _, batches = flow_phase(fp, args, monkeypatch)
    loads = {j.name for j in batches[0] if any(x.startswith("stage.module.image_encoder_ckpt=") for x in j.argv)}
    assert loads == set(fp.ENCODER_RUNS)


@pytest.mark.parametrize("argv, problem", [
    (["--view-pretrain-variant", "floor"], "--view-pretrain-variant needs --view-pretrain-minutes"),
    (["--view-pretrain-minutes", "2", "--view-pretrain-variant", "floor", "--flows", "ss_flow_cell",
      "--flow-variant", "ss_flow_cell_x=ss_flow_cell:view_pretrain=wide"],
     "view_pretrain=wide names no --view-pretrain-variant (floor)"),
    (["--view-pretrain-minutes", "2", "--view-pretrain-variant", "floor",
      "--flow-variant", "ss_flow_x=ss_flow:view_pretrain=floor"], "needs a base that loads the pretrained encoder"),
])
def test_a_flow_bound_to_a_missing_or_encoderless_view_pretraining_is_refused(tmp_path, capsys, argv, problem):
    fp = load_script("benchmarks/full_pipeline.py")
    with pytest.raises(SystemExit):
        fp.parse_args(["--root", str(tmp_path), *argv])
    assert problem in capsys.readouterr().err
