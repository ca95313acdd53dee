"""The reproduction end to end at the smoke budget: every experiment of configs/experiments/shapes.yaml, two seeds,
a few steps each, in two worker processes."""

import json
import shutil

import pytest
import torch
from PIL import Image

from unimm.experiments.reproduce import experiment_config, load_experiments, reproduce, trained_tasks
from unimm.experiments.spec import experiment_steps, run_order
from unimm.pretrained import load_pretrained
from unimm.registry import ENCODERS, ConfigError


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    spec = load_experiments("experiments/shapes", budget="smoke")
    report = reproduce(spec, out, command="unimm reproduce --budget smoke --jobs 2", jobs=2, threads=1)
    return spec, out, report


def run(out, name, seed=0):
    return out / "runs" / name / f"seed{seed}"


@pytest.mark.slow
def test_smoke_reproduction_writes_the_report(smoke_run):
    spec, out, report = smoke_run
    results = json.loads((out / "results.json").read_text())["experiments"]
    assert list(results) == list(spec.experiments)
    text = report.read_text()
    for name, per_seed in results.items():
        assert list(per_seed) == ["0", "1"], name  # the smoke budget's two seeds
        assert f"| {name} |" in text
        for seed, r in per_seed.items():
            assert r["seed"] == int(seed)
            assert [c["step"] for c in r["curve"]] == ([1, 2] if name in ("und_only", "gen_only") else [2, 4])
            assert set(r["final"]) == set(r["tasks"])
            if "understanding" in r["tasks"]:  # and on the drawn-elsewhere set
                assert r["elsewhere"]["understanding"]["n"] > 0
    # Exp-E / Exp-F: the single-task runs are scored only on what they trained, at half janus's steps (the same
    # per-task data as its 1 : 1 mixture).
    assert results["und_only"]["0"]["tasks"] == ["understanding"]
    assert results["gen_only"]["0"]["tasks"] == ["generation"]
    assert results["janus"]["0"]["tasks"] == ["generation", "understanding"]
    assert results["und_only"]["0"]["steps"] == 2 and results["janus"]["0"]["steps"] == 4
    # the report opens with the verdicts, one row per claim, each with a verdict word; cells have intervals
    verdicts = text.split("## Verdicts")[1].split("## Results")[0]
    rows = [line for line in verdicts.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6 and all(any(v in row for v in ("reproduced", "contradicted", "inconclusive")) for row in rows)
    assert " ± " in text.split("## Results")[1].split("\n\n")[1]
    assert "Budget profile: smoke" in text and "Seeds: training and sampling 0, 1" in text
    assert "## Understanding encoder" in text and "pre-trained understanding encoder" in text
    assert json.loads((out / "results.json").read_text())["und_encoder"]["settings"]["steps"] == 3
    for picture in ("plots/loss.png", "plots/scores.png", "grids/generation.png",
                    "grids/autoencoder_llamagen_vq.png", "grids/autoencoder_autoencoder_kl.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 100
    # every experiment trained the same budget: one checkpointed step count in its metrics
    for name, per_seed in results.items():
        for seed in per_seed:
            lines = (run(out, name, seed) / "metrics.jsonl").read_text().splitlines()
            assert max(json.loads(line)["step"] for line in lines) == per_seed[seed]["steps"]
    # the seeds differ: same experiment, different training
    assert not torch.equal(torch.load(run(out, "janus", 0) / "test_images.pt"),
                           torch.load(run(out, "janus", 1) / "test_images.pt"))


@pytest.mark.slow
def test_final_models_are_self_contained_and_a_rerun_reuses_them(smoke_run, tmp_path):
    spec, out, _ = smoke_run
    model, processor, cfg = load_pretrained(run(out, "janusflow") / "final")
    assert cfg.model.generator.autoencoder.path is None  # the trained VAE's weights travel in the model file
    model, processor, cfg = load_pretrained(run(out, "shared_encoder", 1) / "final")
    assert model.und_encoder.tokenizer is model.generator.autoencoder  # one tokenizer for both paths (tied)
    assert cfg.model.generator.autoencoder.path is None and "autoencoder" not in cfg.model.und_encoder
    model, processor, cfg = load_pretrained(run(out, "janus") / "final")
    assert cfg.model.und_encoder.path is None  # the pre-trained encoder travels in the model file
    before = (run(out, "janus", 1) / "result.json").stat().st_mtime_ns
    reproduce(spec, out, only=["janus"])
    assert (run(out, "janus", 1) / "result.json").stat().st_mtime_ns == before
    # a finished run made with other settings (here: sampling) is trained again, not mixed into the report
    hotter = load_experiments("experiments/shapes", ["sample.vq.temperature=0.9"], budget="smoke")
    reproduce(hotter, out, only=["janus"])
    result = json.loads((run(out, "janus", 1) / "result.json").read_text())
    assert result["sample"]["temperature"] == 0.9 and result["made"]["sample"]["temperature"] == 0.9
    assert set(result["made"]["parts"]) == {"autoencoder llamagen_vq", "und_encoder"}
    # an autoencoder is kept while the file asks for the settings it was trained with, retrained when they change
    from unimm.experiments.prepare import autoencoder_jobs, prepare_data, train_one_autoencoder

    data = prepare_data(spec, out)
    slot = autoencoder_jobs(spec)["llamagen_vq"]
    kept = out / "autoencoders" / "llamagen_vq" / "result.json"
    before = kept.stat().st_mtime_ns
    train_one_autoencoder(spec, "llamagen_vq", slot, out, data)
    assert kept.stat().st_mtime_ns == before
    changed = load_experiments("experiments/shapes", ["autoencoders.llamagen_vq.steps=2"], budget="smoke")
    # retrained in a copy: the runs here must keep the autoencoder they were made with
    shutil.copytree(out / "data", tmp_path / "data")
    data = prepare_data(changed, tmp_path)
    assert train_one_autoencoder(changed, "llamagen_vq", slot, tmp_path, data)["settings"]["steps"] == 2


@pytest.mark.slow
def test_parts_trained_on_other_images_are_trained_again(smoke_run, tmp_path):
    # data.plain_targets (on in the committed file) changes the training split's text-to-image targets: with it off
    # the split is exported again, and the VQ tokenizer, which encodes those targets, and the ViT, trained on that
    # split, are trained again on it
    from unimm.experiments.prepare import (autoencoder_jobs, encoder_job, generation_targets, prepare_data,
                                           pretrain_und_encoder, train_data, train_one_autoencoder)

    spec, out, _ = smoke_run
    assert spec.data.plain_targets
    for part in ("data", "autoencoders", "encoders"):
        shutil.copytree(out / part, tmp_path / part)
    varied = load_experiments("experiments/shapes", ["data.plain_targets=false"], budget="smoke")
    data = prepare_data(varied, tmp_path)
    assert all(path.parent.name == "images" for path in generation_targets(data["train"]))
    old = json.loads((out / "autoencoders" / "llamagen_vq" / "result.json").read_text())
    assert old["data"]["config"]["generation_targets"] == "plain"
    new = train_one_autoencoder(varied, "llamagen_vq", autoencoder_jobs(varied)["llamagen_vq"], tmp_path, data)
    assert new["data"] == train_data(data) != old["data"] and new["started"] > old["finished"]
    assert "generation_targets" not in new["data"]["config"]
    encoder = pretrain_und_encoder(varied, encoder_job(varied), tmp_path, data)
    assert encoder["data"] == train_data(data) and encoder["started"] > old["finished"]


@pytest.mark.slow
def test_patch_labels_pretrain_the_encoder_again_and_score_its_tokens(smoke_run, tmp_path):
    # und_encoder_pretraining.patch_labels: the kept ViT was made without them, so it is trained again, each of
    # its 16 tokens labelled with the object under it, and the held-out score counts those labels too
    from unimm.experiments.prepare import encoder_job, kept_und_encoder, prepare_data, pretrain_und_encoder

    spec, out, _ = smoke_run
    shutil.copytree(out / "data", tmp_path / "data")
    shutil.copytree(out / "encoders", tmp_path / "encoders")
    dense = load_experiments("experiments/shapes", ["und_encoder_pretraining.patch_labels=true"], budget="smoke")
    data = prepare_data(dense, tmp_path)
    assert kept_und_encoder(spec, tmp_path, data) is not None and kept_und_encoder(dense, tmp_path, data) is None
    encoder = pretrain_und_encoder(dense, encoder_job(dense), tmp_path, data)
    assert encoder["settings"]["patch_labels"] is True and 0.0 <= encoder["held_out"]["patch"] <= 1.0
    saved = json.loads((tmp_path / "encoders" / "und_encoder" / "config.json").read_text())
    assert saved["pretraining"]["objective"].endswith("+ softmax over patch labels")
    assert kept_und_encoder(dense, tmp_path, data) is not None


@pytest.mark.slow
def test_where_questions_join_the_training_split_only_and_keep_the_tokenizer(smoke_run, tmp_path):
    # data.where_questions: the training split is exported again with them (its runs train again), the test split
    # is not, and the VQ tokenizer, which never reads questions, is kept
    from unimm.bench.export import read_jsonl
    from unimm.experiments.prepare import autoencoder_jobs, kept_autoencoder, prepare_data

    spec, out, _ = smoke_run
    for part in ("data", "autoencoders"):
        shutil.copytree(out / part, tmp_path / part)
    where = load_experiments("experiments/shapes", ["data.where_questions=true"], budget="smoke")
    data = prepare_data(where, tmp_path)
    assert {r["qtype"] for r in read_jsonl(data["train"] / "und.jsonl")} >= {"where", "colour"}
    assert "where" not in {r["qtype"] for r in read_jsonl(data["test"] / "und.jsonl")}
    assert (data["test"] / "info.json").read_bytes() == (out / "data" / "test" / "info.json").read_bytes()
    assert all(kept_autoencoder(where, kind, tmp_path, data) is not None for kind in autoencoder_jobs(where))


@pytest.mark.slow
def test_an_interrupted_experiment_restarts_cleanly(smoke_run):
    spec, out, _ = smoke_run
    folder = run(out, "gen_only", 1)
    (folder / "result.json").unlink()  # as if the process died before this run finished
    (folder / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    untouched = (run(out, "gen_only", 0) / "result.json").stat().st_mtime_ns
    result = reproduce(spec, out, only=["gen_only"])
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps and max(steps) == 2
    assert (run(out, "gen_only", 0) / "result.json").stat().st_mtime_ns == untouched
    assert "| gen_only |" in result.read_text()


@pytest.mark.slow
def test_report_only_trains_nothing_and_names_the_unfinished_runs(smoke_run, tmp_path):
    spec, out, _ = smoke_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
    reproduce(spec, copy)  # every run as the file says (tests before this one retrain some otherwise)
    (run(copy, "janusflow", 1) / "result.json").unlink()  # still training
    shutil.rmtree(run(copy, "shared_encoder", 0))  # not started
    report = reproduce(spec, copy, command="unimm reproduce --budget smoke", report_only=True)
    assert not (run(copy, "janusflow", 1) / "result.json").exists() and not run(copy, "shared_encoder", 0).exists()
    text = report.read_text()
    assert ("**In progress: 12 of 14 runs have finished.** Written by `--report-only`, which trains nothing; not "
            "finished, so left out: shared_encoder seed0, janusflow seed1.") in text
    assert "| janusflow | 1 | 4 |" in text and "| janus | 2 | 4 |" in text and "| shared_encoder | 1 | 4 |" in text
    verdicts = text.split("## Verdicts")[1].split("## Results")[0]
    assert "not run (janusflow: needs 2+ seeds)" in verdicts and "not run (shared_encoder: needs 2+ seeds)" in verdicts
    pretraining = next(line for line in verdicts.splitlines() if "`janus` vs `janus_scratch_vit`" in line)
    assert "not run" not in pretraining  # both rows have both seeds: a verdict
    assert "The last sitting" not in text and "Command: `unimm reproduce --budget smoke`" in text
    assert json.loads((copy / "results.json").read_text())["missing"] == ["shared_encoder seed0", "janusflow seed1"]
    # a run made otherwise than the file now says (here: VQ sampling) is not reported as if it were
    hotter = load_experiments("experiments/shapes", ["sample.vq.temperature=0.9"], budget="smoke")
    text = reproduce(hotter, copy, report_only=True).read_text()
    assert "| janus |" not in text and "| janusflow | 1 |" in text
    with pytest.raises(ConfigError, match=r"--report-only: no run has finished in .* without --report-only"):
        reproduce(spec, tmp_path / "empty", report_only=True)
    with pytest.raises(ConfigError, match="--report-only trains nothing and --force retrains everything"):
        reproduce(spec, copy, report_only=True, force=True)


def test_experiment_configs_differ_only_where_they_say(tmp_path):
    spec = load_experiments("experiments/shapes")
    configs = {name: experiment_config(spec, name, tmp_path) for name in spec.experiments}
    backbone = configs["janus"].model.backbone
    for name, cfg in configs.items():
        assert cfg.model.backbone == backbone, name  # same LLM everywhere
        half = name in ("und_only", "gen_only")
        assert cfg.train.stages[0].steps == (spec.budget.steps // 2 if half else spec.budget.steps), name
        assert cfg.train.seed == 0 and cfg.train.output_dir == str(tmp_path / "runs" / name / "seed0")
    assert experiment_config(spec, "janus", tmp_path, seed=2).train.seed == 2
    assert configs["janusflow"].model.generator.repa_layer == 2
    assert configs["janusflow_no_repa"].model.generator.repa_layer is None
    assert configs["shared_encoder"].model.und_encoder.type == "shared_vq"
    assert "autoencoder" not in configs["shared_encoder"].model.und_encoder  # it shares the generation tokenizer
    assert configs["shared_encoder"].model.generator.autoencoder.path == str(tmp_path / "autoencoders/llamagen_vq")
    assert trained_tasks(configs["und_only"]) == ["understanding"]
    assert trained_tasks(configs["gen_only"]) == ["generation"]
    # every ViT row reads the one pre-trained, frozen ViT, except janus_scratch_vit (the pre-training claim's row)
    for name in ("janus", "janusflow", "janusflow_no_repa", "und_only"):
        assert configs[name].model.und_encoder.path == str(tmp_path / "encoders/und_encoder"), name
        assert list(configs[name].train.stages[0].trainable) == ["und_aligner", "backbone", "generator"], name
    assert configs["janus_scratch_vit"].model.und_encoder.get("path") is None
    assert "und_encoder" in configs["janus_scratch_vit"].train.stages[0].trainable


def test_bad_experiment_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'experiment'"):
        load_experiments("experiments/shapes", ["experiment.x=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments:\n  a: {overrides: []}\n")
    with pytest.raises(ConfigError, match="give 'config'"):
        load_experiments(bad)
    bad.write_text("experiments:\n  a: {config: shapes/janus, pretrained_und_encoder: true}\n")
    with pytest.raises(ConfigError, match="no 'und_encoder_pretraining' section"):
        load_experiments(bad)
    spec = load_experiments("experiments/shapes")
    with pytest.raises(ConfigError, match="no such experiment"):
        reproduce(spec, tmp_path, only=["janos"])


@pytest.mark.parametrize("overrides, budget, message", [
    ([], "laptpo", "--budget laptpo: the experiments file has no such profile; profiles: smoke, laptop, gpu"),
    (["budget.seed=0"], None, "budget: unknown key 'seed'; valid keys: steps, evals, seeds"),
    (["budget.seeds=[0,0]"], None, "budget.seeds must be a list of distinct integers"),
    (["budget.seeds=3"], None, "budget.seeds must be a list of distinct integers"),
    (["budget.steps=0"], None, "budget.steps must be a whole number"),
    (["experiments.und_only.steps=1.5"], None, "experiments.und_only.steps must be a whole number of steps"),
    (["experiments.und_only.steps=many"], None, "experiments.und_only.steps must be a whole number of steps"),
    (["experiments.janus.init_from=janusflow", "experiments.janusflow.init_from=janus"], None,
     "init_from goes round in a circle (janus -> janusflow -> janus)"),
    (["experiments.janus.init_from=nowhere/model"], None, "'nowhere/model' is neither an experiment of this file"),
    (["data.tset=5"], None, "data: unknown key 'tset'"),
    (["und_encoder_pretraining.stesp=5"], None, "und_encoder_pretraining: unknown key 'stesp'"),
])
def test_bad_budgets_seeds_and_steps_fail_in_one_line(overrides, budget, message):
    with pytest.raises(ConfigError) as error:
        load_experiments("experiments/shapes", overrides, budget=budget)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_budget_profiles_steps_and_init_from(tmp_path):
    laptop = load_experiments("experiments/shapes")  # the default profile
    assert laptop.budget.profile == "laptop" and list(laptop.budget.seeds) == [0, 1, 2]
    smoke = load_experiments("experiments/shapes", budget="smoke")
    assert smoke.budget.steps == 4 and smoke.data.train == 48 and smoke.autoencoders.llamagen_vq.lr == 3.0e-3
    assert experiment_steps(smoke, "und_only") == 2 and experiment_steps(smoke, "janus") == 4
    spec = load_experiments("experiments/shapes", ["experiments.janus.init_from=gen_only",
                                                   "experiments.janus.steps=7"])
    assert run_order(spec).index("gen_only") < run_order(spec).index("janus")
    cfg = experiment_config(spec, "janus", tmp_path, seed=1)
    assert cfg.train.init_from == str(tmp_path / "runs" / "gen_only" / "seed1" / "final")
    assert cfg.train.stages[0].steps == 7


@pytest.mark.slow
def test_the_default_model_recipe_runs_at_smoke_size(tmp_path):
    # configs/experiments/shapes-default.yaml makes the shipped model in one command: `base` on a pre-trained,
    # frozen ViT, then `shipped` continued from base's final model.
    spec = load_experiments("experiments/shapes-default", budget="smoke")
    reproduce(spec, tmp_path, command="unimm reproduce --experiments experiments/shapes-default --budget smoke")
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["experiments"]) == {"base", "shipped"}
    # no claim's rows are in this file: the report says so instead of a table of "not run" claims
    verdicts = (tmp_path / "report.md").read_text().split("## Verdicts")[1].split("## Results")[0]
    assert "so there is no verdict" in verdicts and "|" not in verdicts
    assert results["und_encoder"]["settings"]["steps"] == 2
    shipped = tmp_path / "runs" / "shipped" / "seed0"
    cfg = load_pretrained(shipped / "final").config
    assert cfg.model.und_encoder.path is None and cfg.train.stages[0].lr == 1.0e-3
    assert cfg.train.init_from == str(tmp_path / "runs" / "base" / "seed0" / "final")
    # base trained an understanding step (which would move an unfrozen encoder) and kept the encoder it began with
    base = tmp_path / "runs" / "base" / "seed0"
    assert any("loss/understanding" in json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines())
    model = load_pretrained(base / "final").model
    pretrained = ENCODERS.build({"type": "siglip", "path": str(tmp_path / "encoders" / "und_encoder")}, where="x")
    for (name, a), b in zip(model.und_encoder.state_dict().items(), pretrained.state_dict().values()):
        assert torch.equal(a, b), name
    # shipped started from base's final weights (two small steps away from them), not from a fresh initialisation
    after = load_pretrained(shipped / "final").model.backbone.state_dict()
    start = model.backbone.state_dict()
    moved = sum(float((after[k] - start[k]).norm()) for k in start)
    assert 0 < moved < 0.05 * sum(float(v.norm()) for v in start.values())
