"""The few-shot benchmarks (benchmarks/fewshot_ner.py, fewshot_glue.py) and their report, end to end on a tiny random
encoder and tiny data files: rows, equal step budgets, dev-only model selection, resuming, and RESULTS.md/plots
checked against statistics recomputed here from the rows."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from interruptions import Crash, CrashAtStep
from script_fixtures import CONLL_SENTENCES, SENTIMENT, tiny_encoder_folder, write_conll, write_mrpc_tsv

from dwatt import DWAttForTokenClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts are scripts, not a package

import fewshot_common  # noqa: E402
import fewshot_glue  # noqa: E402
import fewshot_ner  # noqa: E402
import provenance  # noqa: E402
import report  # noqa: E402

HEADS = ("last", "dwatt", "concat")
SIZES = (6, 12)
SEEDS = (1, 2)
STEPS = {6: 8, 12: 12}  # different budgets per size: each head of a size must get its own size's budget
EVAL_EVERY = {6: 2, 12: 4}
ROW_KEYS = {
    "benchmark", "task", "encoder", "size", "seed", "head", "run_id", "settings", "settings_id", "smoke", "steps",
    "trained_steps", "best_step", "dev", "final_dev", "test", "curve", "parameters", "wall_s", "machine", "command",
    "git_commit", "train_examples", "dev_examples", "test_examples", "depth_weights", "encoder_path", "finished_at",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewshot")
    tiny_encoder_folder(root / "encoder")
    conll = root / "conll"
    conll.mkdir()
    write_conll(conll / "train.txt", CONLL_SENTENCES * 3)
    write_conll(conll / "valid.txt")
    # test == dev: at the restored best weights, test must then score exactly what dev scored at the best step.
    write_conll(conll / "test.txt")
    mrpc = root / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    write_mrpc_tsv(mrpc / "train.tsv", SENTIMENT * 2)
    write_mrpc_tsv(mrpc / "dev.tsv")
    write_mrpc_tsv(mrpc / "msr_paraphrase_test.txt")  # MRPC's labelled test file
    return root


def ner_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--encoders", f"tiny={root / 'encoder'}", "--data-dir", str(root / "conll"),
        "--sizes", *map(str, SIZES), "--seeds", *map(str, SEEDS), "--heads", *HEADS,
        "--steps", *(f"{s}:{n}" for s, n in STEPS.items()), "--eval-every", *(f"{s}:{n}" for s, n in EVAL_EVERY.items()),
        "--batch-size", "4", "--eval-batch-size", "8", "--encoder-lr", "3e-2", "--head-lr", "3e-2",
        "--device", "cpu", "--verify-restore", "--out", str(out), *extra,
    ]


@pytest.fixture(scope="module")
def ner_run(workspace):
    """The grid in two calls: the first stops after one run (time budget 0), the second resumes; a third has
    nothing left to do."""
    out = workspace / "results" / "fewshot_ner.jsonl"
    first = fewshot_ner.main(ner_argv(workspace, out, "--time-budget-s", "0"))
    second = fewshot_ner.main(ner_argv(workspace, out))
    text_before = out.read_text()
    third = fewshot_ner.main(ner_argv(workspace, out))
    return {"out": out, "calls": (first, second, third), "text_before_third": text_before}


@pytest.fixture(scope="module")
def glue_rows(workspace):
    out = workspace / "results" / "fewshot_glue.jsonl"
    return fewshot_glue.main([
        "--encoders", f"tiny={workspace / 'encoder'}", "--glue-dir", str(workspace / "glue"), "--tasks", "MRPC",
        "--sizes", "8", "--seeds", "1", "2", "--heads", "last", "dwatt", "--steps", "6", "--eval-every", "2",
        "--batch-size", "4", "--encoder-lr", "3e-2", "--head-lr", "3e-2", "--device", "cpu", "--out", str(out),
    ])


def test_ner_rows_have_the_budget_and_the_dev_selected_step(ner_run, workspace):
    rows = fewshot_common.read_rows(ner_run["out"])
    assert len(rows) == len(SIZES) * len(SEEDS) * len(HEADS)
    assert len({row["run_id"] for row in rows}) == len(rows)
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["benchmark"] == "fewshot_ner" and row["smoke"] is False
        # The same budget for every head of a size, and all of it trained.
        assert row["steps"] == row["trained_steps"] == STEPS[row["size"]]
        assert row["settings"]["eval_every"] == EVAL_EVERY[row["size"]]
        assert row["train_examples"] == row["size"]
        steps = [point["step"] for point in row["curve"]]
        assert steps == list(range(EVAL_EVERY[row["size"]], STEPS[row["size"]] + 1, EVAL_EVERY[row["size"]]))
        # Model selection on dev: the first step with the best dev F1, and its metrics.
        scores = [point["f1"] for point in row["curve"]]
        assert row["best_step"] == steps[scores.index(max(scores))]
        best = row["curve"][steps.index(row["best_step"])]
        assert row["dev"] == {k: v for k, v in best.items() if k not in ("step", "train_loss", "eval_runtime")}
        assert row["final_dev"]["f1"] == scores[-1]
        # The best weights really were restored: dev re-scores the same, and test (the same file) scores it too.
        assert row["dev_after_restore"] == pytest.approx(row["dev"])
        assert row["test"] == pytest.approx(row["dev"])
        assert (row["depth_weights"] is not None) == (row["head"] == "dwatt")
        if row["depth_weights"] is not None:
            assert sum(row["depth_weights"]) == pytest.approx(1.0, abs=1e-4)
    # Same learning rates for all; one settings id per size.
    assert {(r["settings"]["encoder_lr"], r["settings"]["head_lr"]) for r in rows} == {(3e-2, 3e-2)}
    assert len({(r["size"], r["settings_id"]) for r in rows}) == len(SIZES)


def test_ner_parameter_counts_match_a_fresh_model(ner_run, workspace):
    rows = {row["head"]: row for row in fewshot_common.read_rows(ner_run["out"]) if row["size"] == 6 and row["seed"] == 1}
    for head, row in rows.items():
        model = DWAttForTokenClassification.from_encoder_pretrained(str(workspace / "encoder"), fusion=head, num_labels=9)
        assert row["parameters"]["total"] == sum(p.numel() for p in model.parameters())
        assert row["parameters"]["encoder"] == sum(p.numel() for p in model.dwatt.encoder.parameters())
        assert row["parameters"]["fusion"] == sum(p.numel() for p in model.dwatt.fusion_classifier.parameters())
    assert rows["last"]["parameters"]["fusion"] == 0


def test_grid_resumes_and_skips_finished_runs(ner_run):
    first, second, third = ner_run["calls"]
    assert len(first) == 1  # the time budget stops after the first run
    assert len(second) == len(SIZES) * len(SEEDS) * len(HEADS) - 1
    assert {r["run_id"] for r in first}.isdisjoint(r["run_id"] for r in second)
    assert third == [] and ner_run["out"].read_text() == ner_run["text_before_third"]


def test_other_settings_refuse_to_mix_into_the_same_file(ner_run, workspace):
    argv = ner_argv(workspace, ner_run["out"])
    argv[argv.index("--head-lr") + 1] = "1e-3"
    with pytest.raises(SystemExit, match="with other settings"):
        fewshot_ner.main(argv)


def test_a_stopped_run_resumes_from_its_checkpoint_with_the_uninterrupted_result(workspace, tmp_path, monkeypatch):
    def argv(out: Path, *extra: str) -> list[str]:
        return [
            "--encoders", f"tiny={workspace / 'encoder'}", "--data-dir", str(workspace / "conll"), "--sizes", "6",
            "--seeds", "2", "--heads", "dwatt", "--steps", "8", "--eval-every", "2", "--batch-size", "4",
            "--eval-batch-size", "8", "--encoder-lr", "3e-2", "--head-lr", "3e-2", "--device", "cpu",
            "--out", str(out), *extra,
        ]

    (straight,) = fewshot_ner.main(argv(tmp_path / "straight.jsonl"))
    out, checkpoints = tmp_path / "resumed.jsonl", tmp_path / "checkpoints"
    train_and_select = fewshot_common.train_and_select
    monkeypatch.setattr(
        fewshot_common, "train_and_select",
        lambda *args, **kwargs: train_and_select(*args, **kwargs, callbacks=[CrashAtStep(6)]),
    )
    with pytest.raises(Crash):
        fewshot_ner.main(argv(out, "--checkpoint-dir", str(checkpoints)))
    monkeypatch.undo()
    assert not out.exists()  # no row for a run that did not finish
    (run_folder,) = (checkpoints / "conll2003" / "tiny" / "n6" / "seed2" / "dwatt").iterdir()
    assert sorted(path.name for path in run_folder.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    # As if the process had died while step 6 was being saved: that checkpoint is incomplete, step 4 is resumed from.
    (run_folder / "checkpoint-6" / fewshot_common.DevSelection.STATE_FILE).unlink()

    (resumed,) = fewshot_ner.main(argv(out, "--checkpoint-dir", str(checkpoints)))
    assert resumed["resumed_from_steps"] == [4] and "resumed_from_steps" not in straight
    assert not run_folder.exists()
    assert fewshot_common.read_rows(out) == [resumed]

    def without_timings(curve: list[dict]) -> list[dict]:
        return [{k: v for k, v in point.items() if k != "eval_runtime"} for point in curve]

    # Same data order, dropout, optimiser and schedule after the resume: the same curve, selection and test score.
    assert [point["step"] for point in resumed["curve"]] == [2, 4, 6, 8]
    for point, expected in zip(without_timings(resumed["curve"]), without_timings(straight["curve"])):
        assert point == pytest.approx(expected, rel=1e-5)
    assert resumed["best_step"] == straight["best_step"]
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5)
    assert resumed["depth_weights"] == pytest.approx(straight["depth_weights"], rel=1e-4)
    assert resumed["settings_id"] == straight["settings_id"]


def test_shards_split_the_grid_without_overlap():
    runs = fewshot_common.build_grid(["t"], ["e"], [1, 2], [1, 2, 3], ["last", "dwatt"])
    # Heads innermost: an interrupted grid leaves whole head comparisons behind.
    assert [r.head for r in runs[:2]] == ["last", "dwatt"] and runs[0].seed == runs[1].seed
    shards = [[r for i, r in enumerate(runs) if i % 3 == k] for k in range(3)]
    assert sorted(r.run_id for shard in shards for r in shard) == sorted(r.run_id for r in runs)


def test_step_tables_must_cover_every_size():
    assert fewshot_common.parse_size_table(["50:200", "1000:900"], [50, 1000], "steps") == {50: 200, 1000: 900}
    assert fewshot_common.parse_size_table(["30"], [50, 200], "steps") == {50: 30, 200: 30}
    with pytest.raises(SystemExit, match="200"):
        fewshot_common.parse_size_table(["50:200"], [50, 200], "steps")


def test_eval_interval_must_divide_the_step_budget(workspace, tmp_path):
    out = tmp_path / "rows.jsonl"
    with pytest.raises(SystemExit, match="--eval-every 7 does not divide --steps 30"):
        fewshot_ner.main(ner_argv(workspace, out, "--steps", "30", "--eval-every", "7"))
    assert not out.exists() or not out.read_text()  # refused before any run


def test_param_groups_split_encoder_from_head(workspace):
    model = DWAttForTokenClassification.from_encoder_pretrained(str(workspace / "encoder"), fusion="dwatt", num_labels=3)
    encoder_group, head_group = fewshot_common.optimizer_param_groups(model, 1e-5, 1e-3, 0.0)
    assert (encoder_group["lr"], head_group["lr"]) == (1e-5, 1e-3)
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in model.dwatt.encoder.parameters()}
    expected_head = list(model.dwatt.fusion_classifier.parameters()) + list(model.classifier.parameters())
    assert {id(p) for p in head_group["params"]} == {id(p) for p in expected_head}


def test_glue_rows(glue_rows):
    assert len(glue_rows) == 4
    for row in glue_rows:
        assert row["benchmark"] == "fewshot_glue" and row["task"] == "mrpc"
        assert row["steps"] == row["trained_steps"] == 6
        accuracies = [point["accuracy"] for point in row["curve"]]
        assert row["best_step"] == row["curve"][accuracies.index(max(accuracies))]["step"]
        assert row["final_dev"]["accuracy"] == accuracies[-1]
        assert {"accuracy", "f1"} <= set(row["dev"]) and {"accuracy", "f1"} <= set(row["test"])
        assert row["test_examples"] == len(SENTIMENT)


def test_unlabelled_glue_test_split_is_dropped(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    header = "index\tsentence1\tsentence2\tlabel\n"
    rows = "".join(f"{i}\t{text}\t{text}\t{'entailment' if y else 'not_entailment'}\n" for i, (text, y) in enumerate(SENTIMENT))
    (rte / "train.tsv").write_text(header + rows)
    (rte / "dev.tsv").write_text(header + rows)
    (rte / "test.tsv").write_text("index\tsentence1\tsentence2\n" + "".join(f"{i}\ta\tb\n" for i in range(3)))
    splits = fewshot_glue.load_task(tmp_path, "rte")
    assert set(splits) == {"train", "validation"}


def table_row(markdown: str, *cells: str) -> str:
    """The one Markdown table line that starts with these cells."""
    prefix = "| " + " | ".join(cells) + " |"
    (line,) = [line for line in markdown.splitlines() if line.startswith(prefix)]
    return line


def pm(values: list[float], signed: bool = False) -> str:
    mean, std = statistics.mean(values), statistics.stdev(values)
    return (f"{mean:+.2f}" if signed else f"{mean:.2f}") + f" ± {std:.2f}"


def test_report_tables_plots_and_claims(ner_run, glue_rows, workspace):
    rows = fewshot_common.read_rows(ner_run["out"])
    smoke_file = workspace / "smoke" / "smoke.jsonl"
    smoke_file.parent.mkdir(exist_ok=True)
    smoke_row = {**rows[0], "encoder": "smokeenc", "smoke": True, "run_id": "smoke/run"}
    smoke_file.write_text(json.dumps(smoke_row) + "\n")
    cost = workspace / "cost_cpu.json"
    cost.write_text(json.dumps({"command": "python benchmarks/cost.py --out x", "machine": {"device": "cpu"}, "rows": [
        {"task": "token", "encoder": "minilm", "seq_len": 32, "batch_size": 8, "fusion": "dwatt", "flop_fraction": 0.05,
         "inference_ratio": 1.04, "training_ratio": 1.061, "memory_ratio": 1.1, "meets_time_target": True}]}))
    out, plots = workspace / "RESULTS.md", workspace / "plots"
    # A dev set with 3 of 4 labels positive: the majority-class line must say 75%.
    unbalanced = workspace / "glue_unbalanced" / "MRPC"
    unbalanced.mkdir(parents=True)
    write_mrpc_tsv(unbalanced / "dev.tsv", [("good", 1), ("great", 1), ("fine", 1), ("bad", 0)])
    # The NER file twice: a row copied into two files must count once (seeds column = 2).
    report.main(["--results", str(ner_run["out"]), str(ner_run["out"]), str(workspace / "results" / "fewshot_glue.jsonl"),
                 "--smoke", str(smoke_file), "--cost", str(cost), "--ablations", "--init-scale", "--out", str(out),
                 "--plots-dir", str(plots), "--glue-dir", str(unbalanced.parent)])
    text = out.read_text()

    assert "| " + " | ".join(report.NER_HEADER) + " |" in text
    assert "| " + " | ".join(report.GLUE_HEADER) + " |" in text
    # Mean ± std over seeds and the paired gain over `last`, recomputed here from the rows.
    f1 = {(r["size"], r["head"], r["seed"]): {s: 100 * r[s]["f1"] for s in ("dev", "test")} for r in rows}
    for size in SIZES:
        for head in HEADS:
            line = table_row(text, "tiny", f"{size:,}", head, str(len(SEEDS)))
            for split in ("dev", "test"):
                assert pm([f1[(size, head, seed)][split] for seed in SEEDS]) in line
            if head != "last":
                gains = [f1[(size, head, seed)]["test"] - f1[(size, "last", seed)]["test"] for seed in SEEDS]
                assert pm(gains, signed=True) in line
    # Claim 2's start: the range over seeds of dev F1 at the first two evaluations, recomputed from the curves.
    claim2 = text.split("### 2. ")[1].split("### 3. ")[0]
    for size in SIZES:
        for head in ("last", "dwatt", "concat"):
            firsts = [sorted(r["curve"], key=lambda p: p["step"])[:2] for r in rows if (r["size"], r["head"]) == (size, head)]
            expected = ", ".join(
                f"{min(100 * c[i]['f1'] for c in firsts):.0f}–{max(100 * c[i]['f1'] for c in firsts):.0f} @{firsts[0][i]['step']}"
                for i in range(2))
            assert table_row(claim2, "tiny", f"{size:,}", head).endswith(f"| {expected} |")
    # Claim 3 at the largest size, DWAtt − Concat paired over seeds.
    diffs = [f1[(max(SIZES), "dwatt", s)]["test"] - f1[(max(SIZES), "concat", s)]["test"] for s in SEEDS]
    assert f"tiny, largest measured size {max(SIZES)}" in text and pm(diffs, signed=True) in text
    assert "- minilm: not measured yet" in text and "| minilm | 50 | 0/3 | 0/3 | 0/3 | 0/3 | 0/3 | not measured yet |" in text
    assert text.count("**Verdict:") == 2
    # The planned MiniLM/MPNet cells have no rows and the tiny rows have fewer seeds than planned: every verdict
    # says it is provisional.
    assert len(SEEDS) < report.PLANNED_SEEDS
    assert text.count("**Verdict: provisional, ") == 2
    (claim3,) = [line for line in text.splitlines() if line.startswith(f"- tiny, largest measured size {max(SIZES)}")]
    assert "**provisional, " in claim3
    # Smoke rows only in their own section; the cost table is read; the commands are listed.
    main_part, smoke_part = text.split("## Smoke runs (NOT results)")
    assert "smokeenc" not in main_part and "smokeenc" in smoke_part
    assert "| token | minilm | 32 | 8 | dwatt | 5.00% | 1.040 | 1.061 | 1.100 | yes |" in text
    assert rows[0]["command"] in text
    names = sorted(p.name for p in plots.glob("*.png"))
    # GLUE coverage: the tiny MRPC cell has 2 of 3 seeds for the two heads it ran; the planned MiniLM cells have none.
    assert "| mrpc | tiny | 8 | 2/3 | 0/3 | 0/3 | 2/3 | incomplete |" in text
    assert "| rte | minilm | 1,000 | 0/3 | 0/3 | 0/3 | 0/3 | not measured yet |" in text
    assert "Majority-class dev accuracy (always the most frequent dev label): mrpc 75.00 (3/4)." in text
    assert names == ["glue_mrpc_tiny_dev_curves.png", "glue_mrpc_tiny_vs_size.png", "ner_dev_curves_tiny.png",
                     "ner_f1_vs_size_tiny.png",
                     "smoke_fewshot_ner_conll2003_smokeenc_curves.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.glob("*.png"))
    for name in names:
        assert f"(plots/{name})" in text


def test_report_shows_repeats_on_another_device_beside_their_rows_only(ner_run, workspace):
    """A row run again on a GPU is compared with the row it repeats (same run id and settings) and never averaged
    into the tables; a repeat of a run that has no row is named, not compared."""
    rows = fewshot_common.read_rows(ner_run["out"])
    original = next(r for r in rows if r["head"] == "dwatt")
    repeat = {**original, "machine": {**original["machine"], "device": "cuda", "gpu": "Some GPU"},
              "test": {**original["test"], "f1": original["test"]["f1"] - 0.0123}, "best_step": 4}
    orphan = {**original, "run_id": "conll2003/tiny/n999/seed1/dwatt"}
    checks = workspace / "device_check.jsonl"
    checks.write_text(json.dumps(repeat) + "\n" + json.dumps(orphan) + "\n")
    out = workspace / "DEVICE.md"
    report.main(["--results", str(ner_run["out"]), "--device-checks", str(checks), "--smoke", "--cost", "--ablations",
                 "--init-scale", "--out", str(out), "--plots-dir", str(workspace / "p3")])
    text = out.read_text()

    dev, test = 100 * original["dev"]["f1"], 100 * original["test"]["f1"]
    line = table_row(text, original["run_id"], "dwatt", f"CPU ({original['machine']['torch_threads']} threads)", "Some GPU")
    assert line == (f"| {original['run_id']} | dwatt | CPU ({original['machine']['torch_threads']} threads) | Some GPU | "
                    f"{dev:.2f} | {dev:.2f} | {test:.2f} | {test - 1.23:.2f} | -1.23 | {original['best_step']} / 4 |")
    assert "Repeats of runs with no result row (not compared): `conll2003/tiny/n999/seed1/dwatt`." in text
    # The repeat is not a seed: the main table still counts the seeds of the results file alone.
    table_row(text.split("## The paper's claims")[0], "tiny", f"{original['size']:,}", "dwatt", str(len(SEEDS)))


def test_wall_time_is_averaged_per_device():
    cpu = {"machine": {"device": "cpu", "torch_threads": 2}, "wall_s": {"total": 3000.0}}
    gpu = {"machine": {"device": "cuda", "gpu": "Some GPU"}, "wall_s": {"total": 100.0}}
    assert report.wall_time([cpu, {**cpu, "wall_s": {"total": 3100.0}}], "total") == "3,050.0"
    assert report.wall_time([cpu, gpu], "total") == "3,000.0 (CPU (2 threads), 1); 100.0 (Some GPU, 1)"


def test_majority_baseline_says_when_the_data_is_missing(tmp_path):
    assert report.glue_majority_baseline([{"task": "rte"}], tmp_path).endswith(f"rte: no dev set in {tmp_path}.")
    assert report.glue_majority_baseline([], tmp_path) == ""


def test_report_says_not_measured_for_missing_heads(ner_run, workspace):
    partial = workspace / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in fewshot_common.read_rows(ner_run["out"]) if r["head"] != "concat"))
    out = workspace / "PARTIAL.md"
    report.main(["--results", str(partial), "--smoke", "--cost", "--ablations", "--init-scale", "--out", str(out), "--plots-dir", str(workspace / "p2")])
    text = out.read_text()
    assert table_row(text, "tiny", "6", "concat").endswith("| not measured yet | — | — |")
    assert "- tiny: not measured yet (no size with both DWAtt and Concat)." in text
    assert "Not measured yet: run `python benchmarks/cost.py" in text
    assert "No smoke runs." in text


# ------------------------------------------------------------------------------------------------------------------
# Head settings (--head-config) and the ablation section of the report
# ------------------------------------------------------------------------------------------------------------------


def ablation_argv(root: Path, out: Path, *extra: str) -> list[str]:
    """The main grid's NER arguments for size 6 only, with `extra` changing one setting."""
    argv = ner_argv(root, out, *extra)
    sizes = argv.index("--sizes")
    argv[sizes + 1 : sizes + 1 + len(SIZES)] = ["6"]
    return argv


@pytest.fixture(scope="module")
def ablation_files(ner_run, workspace):
    folder = workspace / "ablations"
    config = folder / "concat_width.jsonl"
    fewshot_ner.main([*ablation_argv(workspace, config, "--head-config", "concat_hidden_size=8", "zero_init_residual=true"),
                      "--heads", "concat"])
    lr = folder / "head_lr.jsonl"
    argv = ablation_argv(workspace, lr, "--heads", "last", "dwatt")
    argv[argv.index("--head-lr") + 1] = "1e-2"
    fewshot_ner.main(argv)
    return {"config": config, "lr": lr}


def test_guidance_on_heads_suggested_per_run_is_chosen_on_that_runs_sentences(ner_run, workspace):
    """`attention_guidance_heads=suggest:…`: each run chooses on its own few-shot draw and its row says which."""
    from pattern_reference import reference_mass
    from transformers import AutoModel, AutoTokenizer

    from dwatt.attention_patterns import suggest_guidance_heads
    from dwatt.data import load_ner_data, select_few_shot

    out = workspace / "ablations" / "suggested.jsonl"
    fewshot_ner.main([*ablation_argv(workspace, out, "--head-config", "attention_guidance_heads=suggest:0,1,1,1"),
                      "--heads", "last"])
    rows = fewshot_common.read_rows(out)
    assert sorted(row["seed"] for row in rows) == list(SEEDS)
    tokenizer = AutoTokenizer.from_pretrained(workspace / "encoder")
    stock = AutoModel.from_pretrained(workspace / "encoder", attn_implementation="eager").eval()
    for row in rows:
        sentences = list(select_few_shot(load_ner_data(str(workspace / "conll"))["train"], 6, row["seed"])["tokens"])
        batch = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            attentions = stock(**batch, output_attentions=True).attentions
        expected = suggest_guidance_heads(reference_mass(attentions, batch["attention_mask"]).numpy(), [0, 1, 1, 1])
        assert row["suggested_attention_guidance_heads"] == expected
        assert row["settings"]["head_config"] == {"attention_guidance_heads": "suggest:0,1,1,1"}
    # The model the run trains guides those heads.
    from transformers import DataCollatorForTokenClassification

    data = fewshot_ner.NerData(workspace / "conll", {"tiny": str(workspace / "encoder")}, 64, None)
    model, chosen = fewshot_common.from_encoder_pretrained(
        DWAttForTokenClassification, str(workspace / "encoder"), "last", {"attention_guidance_heads": "suggest:0,1,1,1"},
        data.train_set("tiny", 6, rows[0]["seed"]), DataCollatorForTokenClassification(tokenizer), num_labels=9,
    )
    assert model.config.attention_guidance_heads == chosen["suggested_attention_guidance_heads"]
    assert chosen["suggested_attention_guidance_heads"] == rows[0]["suggested_attention_guidance_heads"]
    assert report.head_config_value("attention_guidance_heads", "suggest:0,1,1,1") == (
        "heads suggested on each run's training examples (0,1,1,1)")
    with pytest.raises(SystemExit, match="suggest:1,1.*must be 4 non-negative head counts"):
        fewshot_common.parse_head_config(["attention_guidance_heads=suggest:1,1"], ["last"])


def test_head_config_reaches_the_model_and_the_settings(ablation_files, ner_run, workspace):
    rows = fewshot_common.read_rows(ablation_files["config"])
    assert len(rows) == len(SEEDS)
    expected = DWAttForTokenClassification.from_encoder_pretrained(
        str(workspace / "encoder"), fusion="concat", num_labels=9, concat_hidden_size=8
    )
    for row in rows:
        assert row["settings"]["head_config"] == {"concat_hidden_size": 8, "zero_init_residual": True}
        assert row["parameters"]["fusion"] == sum(p.numel() for p in expected.dwatt.fusion_classifier.parameters())
    main = {r["run_id"]: r for r in fewshot_common.read_rows(ner_run["out"])}
    assert all(row["settings_id"] != main[row["run_id"]]["settings_id"] for row in rows)


def test_settings_id_without_head_config_is_unchanged():
    """Rows written before --head-config existed must keep their ids: an empty head config is not hashed."""
    fields = dict(steps=8, eval_every=2, batch_size=4, encoder_lr=3e-2, head_lr=3e-2, weight_decay=0.0, warmup_ratio=0.1,
                  max_seq_length=256, max_eval=None, selection_metric="f1")
    old_id = __import__("hashlib").sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    settings = fewshot_common.TrainSettings(eval_batch_size=8, **fields)
    assert settings.settings_id() == old_id
    assert fewshot_common.TrainSettings(eval_batch_size=8, head_config={"dwatt_scale_scores": True}, **fields).settings_id() != old_id


@pytest.mark.parametrize(
    "entries,heads,message",
    [
        (["dwatt_scale_scores"], ["dwatt"], "write KEY=VALUE"),
        (["learning_rate=1"], ["dwatt"], "not a DWAttConfig head setting"),
        (["fusion=concat"], ["dwatt"], "not a DWAttConfig head setting"),  # the grid sets the fusion
        (["zero_init_residual=true"], ["dwatt", "scalar_mix"], "does not suit head 'scalar_mix'"),
        (["encoder_num_layers=0"], ["last"], "positive number of layers"),
    ],
)
def test_head_config_errors_name_the_problem(entries, heads, message):
    with pytest.raises(SystemExit, match=message):
        fewshot_common.parse_head_config(entries, heads)


def test_head_config_values_are_json():
    parsed = fewshot_common.parse_head_config(["dwatt_scale_scores=true", "fusion_layers=[0, -1]", "pooling=mean"], ["dwatt"])
    assert parsed == {"dwatt_scale_scores": True, "fusion_layers": [0, -1], "pooling": "mean"}
    # from_encoder_pretrained's layer cut is accepted for every head, `last` included.
    assert fewshot_common.parse_head_config(["encoder_num_layers=4"], ["last", "dwatt"]) == {"encoder_num_layers": 4}


def test_a_changed_last_pairs_with_the_grids_last():
    def row(variant, seed, score):
        return {"task": "sst2", "encoder": "minilm", "size": 1000, "variant": variant, "head": "last", "seed": seed,
                "dev": {"accuracy": score}}

    grid = [row(report.MAIN_GRID, 1, 0.80), row(report.MAIN_GRID, 2, 0.82)]
    cut = [row("encoder_num_layers=4", 1, 0.78), row("encoder_num_layers=4", 2, 0.83)]
    cells = {key[-2]: (baseline, variant) for key, _, baseline, variant in report.ablation_cells(grid + cut, "task")}
    assert cells[report.MAIN_GRID] == ([], "—")  # the grid's own `last` has nothing to pair with
    baseline, variant = cells["encoder_num_layers=4"]
    assert variant == report.MAIN_GRID and baseline == grid
    assert report.paired_differences(cut, baseline, "dev", "accuracy") == pytest.approx([-0.02 * 100, 0.01 * 100])


def test_a_head_config_variant_pairs_with_the_plain_last_not_with_a_changed_last():
    """Regression: a `last` with a head config of its own (a cut encoder, attention guidance) in the same cell was
    taken as the baseline of the other head-config variants, whose gains then read against it."""
    settings = dict(steps=10, eval_every=5, batch_size=4, eval_batch_size=8, encoder_lr=5e-5, head_lr=1e-3,
                    weight_decay=0.0, warmup_ratio=0.1, max_seq_length=32, max_eval=None, selection_metric="accuracy")

    def row(variant, head, head_config, seed, score):
        return {"task": "sst2", "encoder": "minilm", "size": 100, "variant": variant, "head": head, "seed": seed,
                "settings": {**settings, "head_config": head_config}, "dev": {"accuracy": score}}

    plain = [row(report.MAIN_GRID, "last", {}, seed, 0.70 + seed / 100) for seed in (1, 2)]
    changed = [row("encoder_num_layers=4", "last", {"encoder_num_layers": 4}, seed, 0.50) for seed in (1, 2)]
    zero = [row("zero_init_residual=true", "dwatt", {"zero_init_residual": True}, seed, 0.75) for seed in (1, 2)]
    for rows in (plain + changed + zero, changed + plain + zero):  # whichever comes first in the files
        cells = {key[-2:]: (baseline, variant) for key, _, baseline, variant in report.ablation_cells(rows, "task")}
        baseline, variant = cells[("zero_init_residual=true", "dwatt")]
        assert variant == report.MAIN_GRID and baseline == plain
        assert report.paired_differences(zero, baseline, "dev", "accuracy") == pytest.approx([4.0, 3.0])


def test_report_ablations_pair_each_variant_with_its_baseline(ablation_files, ner_run, workspace):
    out = workspace / "ABLATIONS.md"
    report.main(["--results", str(ner_run["out"]), "--ablations", *map(str, ablation_files.values()), "--smoke",
                 "--cost", "--init-scale", "--out", str(out), "--plots-dir", str(workspace / "p3")])
    text = out.read_text()
    test_f1 = {}
    for name, path in [("main", ner_run["out"]), *ablation_files.items()]:
        for r in fewshot_common.read_rows(path):
            if r["size"] == 6:
                test_f1[(name, r["head"], r["seed"])] = 100 * r["test"]["f1"]
    # The head-config variant has no `last` of its own: it pairs with the main grid's.
    gains = [test_f1[("config", "concat", s)] - test_f1[("main", "last", s)] for s in SEEDS]
    line = table_row(text, "tiny", "6", 'concat_hidden_size=8, zero_init_residual=true', "concat")
    assert pm(gains, signed=True) in line and line.count("| main grid |") == 1
    assert f"{pm(gains, signed=True)} | {sum(gain > 0 for gain in gains)} / {len(gains)} | main grid |" in line
    # The learning-rate variant changes `last` too: it pairs with its own `last`.
    gains = [test_f1[("lr", "dwatt", s)] - test_f1[("lr", "last", s)] for s in SEEDS]
    line = table_row(text, "tiny", "6", "head_lr=0.01", "dwatt")
    assert pm(gains, signed=True) in line and "| head_lr=0.01 |" in line.split(pm(gains, signed=True))[1]
    # The main grid's rows of the ablated heads come first, for comparison; the plot is written and linked.
    assert text.index("| tiny | 6 | main grid | last |") < text.index("| tiny | 6 | concat_hidden_size=8")
    plot = workspace / "p3" / "ablation_ner_curves_tiny_6.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "ablation_ner_curves_tiny_6.png)" in text


def test_report_pairs_sentence_task_ablations_with_the_sentence_grid(ablation_files, ner_run, glue_rows, workspace):
    """An ablation of the sentence grid (one file beside the NER ones) gets its own table, paired by seed with the
    sentence grid's `last`, and its own plot; the NER ablation table keeps only NER rows."""
    glue_out = workspace / "results" / "fewshot_glue.jsonl"
    zero_init = workspace / "ablations" / "glue_zero_init.jsonl"
    fewshot_glue.main([
        "--encoders", f"tiny={workspace / 'encoder'}", "--glue-dir", str(workspace / "glue"), "--tasks", "MRPC",
        "--sizes", "8", "--seeds", "1", "2", "--heads", "dwatt", "--head-config", "zero_init_residual=true",
        "--steps", "6", "--eval-every", "2", "--batch-size", "4", "--encoder-lr", "3e-2", "--head-lr", "3e-2",
        "--device", "cpu", "--out", str(zero_init),
    ])
    out = workspace / "GLUE_ABLATIONS.md"
    with pytest.raises(SystemExit, match="no-glue-here not found: the sentence-task tables quote the majority-class"):
        report.main(["--results", str(glue_out), "--glue-dir", str(workspace / "no-glue-here"), "--out", str(out)])
    assert not out.exists()
    report.main(["--results", str(ner_run["out"]), str(glue_out), "--ablations", *map(str, ablation_files.values()),
                 str(zero_init), "--smoke", "--cost", "--init-scale", "--out", str(out), "--plots-dir", str(workspace / "p4")])
    text = out.read_text()
    accuracy = {}
    for name, path in [("main", glue_out), ("zero", zero_init)]:
        for r in fewshot_common.read_rows(path):
            for split in ("dev", "final_dev"):
                accuracy[(name, r["head"], r["seed"], split)] = 100 * r[split]["accuracy"]
    task = fewshot_common.read_rows(zero_init)[0]["task"]
    line = table_row(text, task, "tiny", "8", "zero_init_residual=true", "dwatt")
    for split in ("dev", "final_dev"):
        gains = [accuracy[("zero", "dwatt", s, split)] - accuracy[("main", "last", s, split)] for s in (1, 2)]
        assert pm(gains, signed=True) in line
    assert line.count("| main grid |") == 1  # paired with the sentence grid's own `last`
    glue_section = text.split("### Ablations on the sentence tasks")[1].split("## The same runs")[0]
    assert f"| {task} | tiny | 8 | main grid | last |" in glue_section and "--head-config zero_init_residual=true" in glue_section
    ner_section = text.split("## Ablations: why does fusion trail")[1].split("## Few-shot SST-2")[0]
    assert "| tiny | 8 |" not in ner_section and "| tiny | 6 | main grid | last |" in ner_section
    plot = workspace / "p4" / f"ablation_glue_curves_{task}_tiny_8.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"ablation_glue_curves_{task}_tiny_8.png)" in glue_section


def test_recorded_commit_is_the_checkouts_unless_given(monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    monkeypatch.delenv("DWATT_GIT_COMMIT", raising=False)
    if head.returncode == 0:  # a checkout with its git history
        assert provenance.git_commit().split("+")[0] == head.stdout.strip()
    monkeypatch.setenv("DWATT_GIT_COMMIT", "0123abc")
    assert provenance.git_commit() == "0123abc"



def test_report_variability_section_marks_the_selected_layer(tmp_path):
    runs = {"enc_a": ([0.9, 0.4, 0.6], 1), "enc_b": ([2.0, 1.5], 1)}
    paths = []
    for name, (values, selected) in runs.items():
        folder = tmp_path / "results" / "variability" / name
        folder.mkdir(parents=True)
        (folder / "variability.json").write_text(json.dumps({
            "command": f"python -m dwatt.variability --out {name}", "task": "sst2", "split": "train", "examples": 1000,
            "variability": values, "selected_layer": selected, "git_commit": "abc123", "versions": {"dwatt": "0.2.0"}}))
        (folder / "variability.png").write_bytes(b"\x89PNG")
        paths.append(folder / "variability.json")
    text = report.variability_section(paths, tmp_path / "RESULTS.md")
    assert "| enc_a | sst2 | train | 1,000 | 0.9 | **0.4** | 0.6 | 1 |" in text
    assert "| enc_b | sst2 | train | 1,000 | 2 | **1.5** | — | 1 |" in text  # fewer layers: the missing one is a dash
    assert "![enc_a](results/variability/enc_a/variability.png)" in text
    assert "- `python -m dwatt.variability --out enc_b` (commit abc123)" in text
    assert report.variability_section([], tmp_path / "RESULTS.md").startswith("Not measured yet")


def test_report_attention_patterns_section_reads_every_run_at_every_head_choice(tmp_path):
    # mass[layer][head][pattern]: 2 layers, 3 heads; pattern order self, next, previous, first.
    mass = [[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 0.05, 0.15, 0.25]],
            [[0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9], [0.1, 0.35, 0.45, 0.55]]]
    per_layer = [[[2], [1], [], [0]], [[], [2], [0], [1]]]
    paths = []
    for name, guided, suggested in (("guided", [0, 1, 1, 1], None), ("matched", per_layer, None), ("plain", None, per_layer)):
        folder = tmp_path / "results" / "attention_patterns" / name
        folder.mkdir(parents=True)
        strongest = {pattern: [{"layer": layer + 1, "head": max(range(3), key=lambda h: mass[layer][h][index]),
                                "mass": max(mass[layer][h][index] for h in range(3))} for layer in range(2)]
                     for index, pattern in enumerate(("self", "next", "previous", "first"))}
        (folder / "attention_patterns.json").write_text(json.dumps({
            "command": f"python -m dwatt.attention_patterns --out {name}", "git_commit": "abc123", "mass": mass,
            "patterns": ["self", "next", "previous", "first"], "attention_guidance_heads": guided,
            "strongest_head": strongest, **({"suggested_attention_guidance_heads": suggested} if suggested else {})}))
        paths.append(folder / "attention_patterns.json")
    text = report.attention_patterns_section(paths, tmp_path / "RESULTS.md")
    # Columns: heads 0, 1, 2 for next, previous, first (the guided run's); the per-layer choice (the matched run's,
    # which the plain run's suggestion repeats: one column). Means over layers, by hand:
    #   counts: next (0.2 + 0.3) / 2, previous (0.7 + 0.8) / 2, first (0.25 + 0.55) / 2; self none.
    #   per layer: self 0.9 (layer 1 only), previous 0.4 (layer 2 only), first (0.4 + 0.9) / 2.
    assert "| guided | next | 0.60 (h1) | 0.70 (h1) | 0.25 |" in text
    assert "| guided | previous | 0.70 (h1) | 0.80 (h1) | 0.75 | 0.40 |" in text
    assert "| plain | first | 0.80 (h1) | 0.90 (h1) | 0.40 | 0.65 |" in text
    assert "| matched | self | 0.90 (h2) | 0.60 (h1) | — | 0.90 |" in text  # no head guided to itself by the counts
    assert "heads guided in guided, mean (0,1,1,1)" in text
    assert "heads guided in matched, mean (self 2/-; next 1/2; previous -/0; first 0/1)" in text
    assert text.count("heads suggested in") == 0  # the plain run's suggestion is the matched run's choice
    assert report.attention_patterns_section([], tmp_path / "RESULTS.md").startswith("Not measured yet")

    # A deeper encoder (3 layers) gets a table of its own: its suggestion is a column there, the 2-layer choices not.
    folder = tmp_path / "results" / "attention_patterns" / "deeper"
    folder.mkdir(parents=True)
    deeper = [*mass, mass[0]]
    (folder / "attention_patterns.json").write_text(json.dumps({
        "command": "python -m dwatt.attention_patterns --out deeper", "mass": deeper,
        "patterns": ["self", "next", "previous", "first"], "attention_guidance_heads": None,
        "strongest_head": {pattern: [{"layer": layer + 1, "head": 0, "mass": deeper[layer][0][index]} for layer in range(3)]
                           for index, pattern in enumerate(("self", "next", "previous", "first"))},
        "suggested_attention_guidance_heads": [[[], [0], [], []]] * 3}))
    text = report.attention_patterns_section([*paths, folder / "attention_patterns.json"], tmp_path / "RESULTS.md")
    assert "| guided | next | 0.60 (h1) | 0.70 (h1) | 0.25 |" in text  # the 2-layer table as before
    # Head 0's next-token mass over the 3 layers: (0.2 + 0.3 + 0.2) / 3.
    assert "| run | pattern | layer 1: strongest head | layer 2: strongest head | layer 3: strongest head | heads suggested in deeper, mean (next 0/0/0) |" in text
    assert "| deeper | next | 0.20 (h0) | 0.30 (h0) | 0.20 (h0) | 0.23 |" in text


def test_report_guidance_cost_section_prints_each_ratio_with_its_quartiles(tmp_path):
    path = tmp_path / "guidance_cost_cpu.json"
    path.write_text(json.dumps({
        "command": "python benchmarks/guidance_cost.py --out x.json", "attention_guidance_heads": [0, 1, 1, 4],
        "machine": {"git_commit": "abc123", "python": "3.11"},
        "rows": [{"task": "token", "encoder": "minilm", "seq_len": 32, "batch_size": 8, "plain_step_s": 0.2191,
                  "eager_ratio": 0.982, "eager_ratio_quartiles": [0.951, 1.022],
                  "guided_ratio": 1.12, "guided_ratio_quartiles": [1.103, 1.18]}]}))
    text = report.guidance_cost_section([path])
    assert "| token | minilm | 32 | 8 | 219.1 | 0.982 [0.951, 1.022] | 1.120 [1.103, 1.180] |" in text
    assert "`python benchmarks/guidance_cost.py --out x.json`" in text and "commit abc123" in text
    assert report.guidance_cost_section([]).startswith("Not measured yet")


def test_variant_names_summarise_guidance_on_heads_chosen_per_layer():
    chosen = [[[], [4], [2], [5, 8, 9, 11]], [[], [8], [2], [0, 9, 10, 11]]]
    other = [[[], [4], [3], [5, 8, 9, 11]], [[], [8], [2], [0, 9, 10, 11]]]  # one head differs
    name = report.head_config_value("attention_guidance_heads", chosen)
    assert name.startswith("heads chosen per layer ([0, 1, 1, 4] in each of 2 layers; ")
    assert name != report.head_config_value("attention_guidance_heads", other)
    assert report.head_config_value("attention_guidance_heads", [[[1], [], [], []], [[], [], [], [0, 1]]]).startswith(
        "heads chosen per layer (2 layers; ")
    assert report.head_config_value("attention_guidance_heads", [0, 1, 1, 4]) == "[0, 1, 1, 4]"
    assert report.head_config_value("attention_guidance_weight", 10) == "10"


def _curve_row(head: str, seed: int, f1s: list[float], gpu: str = "") -> dict:
    return {"encoder": "tiny", "size": 50, "head": head, "seed": seed, "machine": {"gpu": gpu, "torch_threads": 2},
            "curve": [{"step": 20 * (i + 1), "f1": f1} for i, f1 in enumerate(f1s)]}


def test_step_efficiency_needs_a_higher_curve_and_reaching_a_good_f1_no_later():
    """A head that starts ahead (higher mean over the curve) but reaches 90% of `last`'s best only later, or never, is
    no step-efficiency win: the verdict said "reproduced" on the curve mean alone."""
    last = [0.0, 0.0, 0.8, 0.9]  # best 0.9: 90% = 0.81, reached at step 80
    fast_start = [0.5, 0.6, 0.7, 0.8]  # higher mean, never reaches 0.81
    faster = [0.5, 0.85, 0.9, 0.9]  # reaches it at step 40
    def rows(head_curve):
        return [_curve_row(head, seed, curve) for seed in (1, 2, 3)
                for head, curve in (("last", last), ("dwatt", head_curve), ("concat", head_curve))]
    text = report.claim_step_efficiency(rows(fast_start))
    assert "| tiny | 50 | dwatt | 65.00 (+22.50) | never |" in text
    assert "Verdict: provisional, partly reproduced" in text and "in 1 of 1 (encoder, size) cells, and reach" in text
    assert "no later than `last` (never counts as later) in 0 of 1" in text and "They start faster" in text
    text = report.claim_step_efficiency(rows(faster))
    assert "| tiny | 50 | dwatt | 78.75 (+36.25) | 40 |" in text and "in 1 of 1" in text and "They start" not in text


def test_heads_of_one_seed_on_different_devices_are_named():
    rows = [_curve_row("last", 1, [0.5]), _curve_row("dwatt", 1, [0.5], gpu="NVIDIA H200"),
            _curve_row("last", 2, [0.5]), _curve_row("dwatt", 2, [0.5])]
    note = report.mixed_device_note(rows)
    assert "tiny 50 seed 1 (last on CPU (2 threads); dwatt on NVIDIA H200)" in note and "seed 2" not in note
    assert report.mixed_device_note(rows[2:]) == ""


def test_cost_files_timed_in_a_fixed_order_say_how_last_came_out(tmp_path):
    """Files measured before cost.py rotated the timing order are marked, with `last`'s own count below 1.000 (the
    operators it runs are the stock model's, so that count shows the order's bias); rotated files are not."""
    rows = [{"task": "token", "encoder": "minilm", "seq_len": 32, "batch_size": 8, "fusion": "last", "flop_fraction": 0.0,
             "inference_ratio": ratio, "training_ratio": 1.0, "meets_time_target": True} for ratio in (0.97, 1.01, 0.99)]
    fixed, rotated = tmp_path / "cost_fixed.json", tmp_path / "cost_rotated.json"
    fixed.write_text(json.dumps({"command": "python benchmarks/cost.py", "machine": {"device": "cpu"}, "rows": rows}))
    rotated.write_text(json.dumps({"command": "python benchmarks/cost.py", "machine": {"device": "cpu"},
                                   "timing_order": "rotated", "rows": rows}))
    assert "came out below 1.000 in 2 of its 3 inference ratios" in report.cost_section([fixed])
    assert "timed the stock model first" not in report.cost_section([rotated])
