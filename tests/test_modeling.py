"""The model matrix: every tiny encoder family x every fusion head x both task classes."""

import warnings

import pytest
import torch
from tiny_encoders import DECODER_FAMILIES, ENCODER_FAMILIES, VOCAB_SIZE, tiny_encoder_config
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

import dwatt
from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification, DWAttModel

FUSIONS = ["dwatt", "concat", "scalar_mix", "deeper", "last"]
TASK_CLASSES = [DWAttForSequenceClassification, DWAttForTokenClassification]


def make_batch(batch_size: int = 3, length: int = 9, pad_from: int = 5):
    """Random ids (never the pad id 0) with the last row right-padded from `pad_from` on."""
    input_ids = torch.randint(4, VOCAB_SIZE, (batch_size, length))
    attention_mask = torch.ones_like(input_ids)
    input_ids[-1, pad_from:] = 0
    attention_mask[-1, pad_from:] = 0
    return input_ids, attention_mask


def make_model(model_class, family: str, fusion: str, **config_kwargs):
    config = DWAttConfig(encoder_config=tiny_encoder_config(family), fusion=fusion, num_labels=3, **config_kwargs)
    return model_class(config)


@pytest.mark.parametrize("model_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_forward_loss_backward_and_padding_invariance(family, fusion, model_class):
    model = make_model(model_class, family, fusion)
    input_ids, attention_mask = make_batch()
    token_level = model_class is DWAttForTokenClassification
    labels = torch.randint(0, 3, input_ids.shape if token_level else input_ids.shape[:1])
    if token_level:
        labels[attention_mask == 0] = -100

    # Training step: finite loss, and every fusion / classifier parameter receives a gradient.
    model.train()
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert output.loss is not None and torch.isfinite(output.loss)
    output.loss.backward()
    head_parameters = {n: p for n, p in model.named_parameters() if not n.startswith("dwatt.encoder.")}
    if fusion != "last":
        assert any(n.startswith("dwatt.fusion_classifier.") for n in head_parameters)
    for name, parameter in head_parameters.items():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got an all-zero gradient"

    # Loss is the standard cross entropy of the returned logits.
    model.eval()
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        flat_logits = output.logits.reshape(-1, 3)
        expected = torch.nn.functional.cross_entropy(flat_logits, labels.reshape(-1), ignore_index=-100)
        torch.testing.assert_close(output.loss, expected)
        expected_shape = (3, 9, 3) if token_level else (3, 3)
        assert output.logits.shape == expected_shape
        assert output.hidden_states is None and output.attentions is None  # only when asked for

        # Padding invariance: the padded row equals the same sentence run alone, unpadded.
        alone = model(input_ids=input_ids[-1:, :5], attention_mask=attention_mask[-1:, :5]).logits
        padded = output.logits[-1:, :5] if token_level else output.logits[-1:]
        torch.testing.assert_close(padded, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["dwatt", "scalar_mix"])
@pytest.mark.parametrize("model_class", TASK_CLASSES + [DWAttModel], ids=lambda c: c.__name__)
def test_fusion_weights_only_when_asked(model_class, fusion):
    model = make_model(model_class, "bert", fusion).eval()
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        plain = model(input_ids=input_ids, attention_mask=attention_mask)
        asked = model(input_ids=input_ids, attention_mask=attention_mask, output_fusion_weights=True)
    assert plain.fusion_weights is None
    weights = asked.fusion_weights
    positions = 1 if model_class is DWAttForSequenceClassification else 9  # pooled heads fuse one position
    assert weights.shape == (3, positions, 1, 4)  # (B, T', heads, sources): 3 layers + embeddings
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, positions, 1))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_hidden_states_and_attentions_when_asked(fusion):
    model = make_model(DWAttForTokenClassification, "bert", fusion, ).eval()
    model.config.encoder_config._attn_implementation = "eager"
    model.dwatt.encoder.config._attn_implementation = "eager"
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == 4 and output.hidden_states[0].shape == (3, 9, 32)
    assert len(output.attentions) == 3 and output.attentions[0].shape == (3, 4, 9, 9)



@pytest.mark.parametrize("model_class", TASK_CLASSES + [DWAttModel], ids=lambda c: c.__name__)
def test_output_flags_set_in_the_config_apply_as_in_transformers_models(tmp_path, model_class):
    """`from_pretrained(folder, output_hidden_states=True, output_attentions=True)` (flags in the config, none in the
    call) returns the encoder's hidden states and attentions, the stock encoder's; an explicit False still wins."""
    make_model(model_class, "bert", "dwatt").save_pretrained(tmp_path)
    model = model_class.from_pretrained(tmp_path, output_hidden_states=True, output_attentions=True,
                                        attn_implementation="eager").eval()
    stock = AutoModel.from_config(model.config.encoder_config, attn_implementation="eager").eval()
    stock.load_state_dict(model.base_model.encoder.state_dict(), strict=False)
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask)
        expected = stock(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
        silenced = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=False, output_attentions=False)
    assert len(output.hidden_states) == 4 and len(output.attentions) == 3
    for got, want in zip(output.hidden_states + output.attentions, expected.hidden_states + expected.attentions):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert silenced.hidden_states is None and silenced.attentions is None



@pytest.mark.parametrize("label_shape", [(1,), (1, 1)])
def test_regression_loss_of_a_batch_of_one_is_the_squared_error(label_shape):
    """A last batch of one example (STS-B): (1,) labels against (1, 1) logits broadcast wrongly if squeezed apart."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", num_labels=1)
    model = DWAttForSequenceClassification(config).eval()
    input_ids, attention_mask = make_batch()
    labels = torch.full(label_shape, 2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about broadcasting in mse_loss
        output = model(input_ids=input_ids[:1], attention_mask=attention_mask[:1], labels=labels)
    torch.testing.assert_close(output.loss, (output.logits[0, 0] - 2.5) ** 2)



@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("family", sorted(DECODER_FAMILIES))
def test_decoder_sequence_logits_without_a_mask_do_not_depend_on_right_padding(family, fusion):
    """No attention_mask: as transformers' decoder classifiers, the tokens after the last non-pad token are padding,
    for the pooled position and for a head that mixes tokens (`deeper` attended to the pads)."""
    torch.manual_seed(0)
    config = DWAttConfig(encoder_config=tiny_encoder_config(family), fusion=fusion, num_labels=3)
    model = DWAttForSequenceClassification(config).eval()
    pad = config.encoder_config.pad_token_id
    sentence = torch.randint(4, VOCAB_SIZE, (1, 5))
    sentence[0, 2] = pad  # a pad id inside the text (GPT-2 pads with its EOS id) stays a real token
    with torch.no_grad():
        alone = model(input_ids=sentence).logits
        for pads in (3, 40):
            padded = torch.cat([sentence, torch.full((1, pads), pad)], dim=1)
            torch.testing.assert_close(model(input_ids=padded).logits, alone, rtol=1e-5, atol=1e-6)


def test_return_dict_false_gives_loss_first():
    model = make_model(DWAttForTokenClassification, "bert", "dwatt").eval()
    input_ids, attention_mask = make_batch()
    labels = torch.zeros_like(input_ids)
    loss, logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, return_dict=False)
    assert loss.dim() == 0 and logits.shape == (3, 9, 3)


@pytest.mark.parametrize("pooling", ["first", "mean", "last"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_sequence_pooling_matches_token_level_fusion(pooling, fusion):
    """Pooling at one position fuses only there; the result equals pooling the full token-level fusion."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion, num_labels=3, pooling=pooling)
    model = DWAttForSequenceClassification(config).eval()
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        fused = model.dwatt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        lengths = attention_mask.sum(-1)
        if pooling == "first":
            pooled = fused[:, 0]
        elif pooling == "last":
            pooled = fused[torch.arange(3), lengths - 1]
        else:
            pooled = torch.stack([fused[i, : lengths[i]].mean(0) for i in range(3)])
        expected = model.classifier.out_proj(torch.tanh(model.classifier.dense(pooled)))
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


# Token-level DWAtt's streamed logits against the plain path's: the same terms summed in another order.
ROUNDING_OF_DWATT_READOUT = dict(rtol=1e-5, atol=1e-6)

# Head settings that change what the streamed inference path keeps: DWAtt keeps each source's value-MLP bottleneck
# (one shared MLP, or z_n itself when the bottleneck is no smaller than d); ScalarMix with per-sequence LayerNorm.
STREAMED_HEADS = {
    "dwatt": ("dwatt", {}),
    "dwatt_shared_value_mlp": ("dwatt", {"dwatt_shared_value_mlp": True}),
    "dwatt_wide_bottleneck": ("dwatt", {"dwatt_bottleneck_ratio": 1.0}),
    "dwatt_batched": ("dwatt", {}),  # the plain path runs the value transforms batched, as on a GPU
    "concat": ("concat", {}),
    "scalar_mix": ("scalar_mix", {}),
    "scalar_mix_layer_norm": ("scalar_mix", {"scalar_mix_layer_norm": True}),
}


def record_streams(model) -> tuple[list, list]:
    """Lists that fill with each streamed forward's stream and encoder output (None: it fell back to the plain path)."""
    streams, streamed = [], []
    encode = model.dwatt._encode_streaming

    def recording_encode(encoder_inputs, stream):
        streams.append(stream)
        streamed.append(encode(encoder_inputs, stream))
        return streamed[-1]

    model.dwatt._encode_streaming = recording_encode
    return streams, streamed


@pytest.mark.parametrize("model_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", list(STREAMED_HEADS))
@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_inference_fuses_sources_as_the_encoder_computes_them(family, variant, model_class):
    """Without gradients the sources are handed to the head layer by layer (hooks) instead of the encoder returning
    all hidden states; logits and depth weights equal those of the plain path, taken with output_hidden_states=True
    and with gradients on: bit for bit, except for token-level DWAtt, whose stream reads each source's value out
    through the (linear) classifier and sums the logits' terms, not the fused state's (the same terms in another
    order: to rounding)."""
    fusion, extra = STREAMED_HEADS[variant]
    model = make_model(model_class, family, fusion, **extra).eval()
    if variant == "dwatt_batched":
        model.dwatt.fusion_classifier.value_path = "batched"
    input_ids, attention_mask = make_batch()
    # Left padding: the first real token of the padded row (pooling "first") is not at position 0.
    input_ids, attention_mask = input_ids.flip(-1), attention_mask.flip(-1)
    streams, streamed = record_streams(model)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, output_fusion_weights=True)
    with torch.no_grad():
        fast = model(**inputs)
        plain = model(**inputs, output_hidden_states=True)
    with torch.enable_grad():
        trained_path = model(**inputs)
    assert len(streamed) == 1 and streamed[0] is not None  # only the no-grad call streamed, and it succeeded
    # Token-level DWAtt reads every source out through the classifier (3 labels: fewer floats than any bottleneck);
    # pooled classifiers keep z_n at the pooled position and run the forward pass itself.
    reads_out = fusion == "dwatt" and model_class is DWAttForTokenClassification
    assert isinstance(streams[0], dwatt.modeling_dwatt.DepthWiseAttentionReadoutStream) == reads_out
    tolerance = ROUNDING_OF_DWATT_READOUT if reads_out else dict(rtol=0, atol=0)
    torch.testing.assert_close(fast.logits, plain.logits, **tolerance)
    torch.testing.assert_close(fast.logits, trained_path.logits.detach(), **tolerance)
    if fusion != "concat":
        torch.testing.assert_close(fast.fusion_weights, plain.fusion_weights, rtol=0, atol=0)


class DoubledLinear(torch.nn.Linear):
    """An nn.Linear subclass whose forward is not W x + b: the readout must not assume its weights say what it does."""

    def forward(self, x):
        return 2 * super().forward(x)


def with_accelerate_hook(model):
    from accelerate.hooks import ModelHook, add_hook_to_module

    add_hook_to_module(model.classifier, ModelHook())  # as device_map / offloading do: weights may move in its forward
    return model


# How a token-level DWAtt model is set up, and whether its no-grad forward may then read the sources out through the
# classifier: only where the logits are exactly one linear map C h + b of the fused state h, and where that keeps less.
READOUT_CASES = {
    "eval": (lambda model: model.eval(), True),
    "train-mode-no-dropout": (lambda model: model.train(), True),  # classifier_dropout=0 below
    "train-mode-dropout": (lambda model: setattr(model.dropout, "p", 0.1) or model.train(), False),
    "linear-subclass": (lambda model: setattr(model, "classifier", DoubledLinear(32, 3)) or model.eval(), False),
    "accelerate-hook": (lambda model: with_accelerate_hook(model).eval(), False),
    # a user's hook that reads the classifier's input (the fused state, as a feature extractor) must get it
    "forward-hook": (lambda model: model.classifier.register_forward_hook(lambda *args: None) and model.eval(), False),
    "more-labels-than-bottleneck": (lambda model: setattr(model, "classifier", torch.nn.Linear(32, 16)) or model.eval(), False),
}


@pytest.mark.parametrize("case", list(READOUT_CASES))
def test_token_dwatt_reads_out_through_the_classifier_only_where_that_is_exact(case):
    """The readout stream sums C v_n source by source, which equals C(z_L + Σ_n a_n v_n) + b only for a plain
    nn.Linear C with no dropout before it, and keeps the classifier's hooks from seeing z_L; elsewhere, and where H·k ≥ γd (16 here) would keep more than the bottleneck,
    inference streams the fused state as before. Either way the logits are the plain path's."""
    setup, reads_out = READOUT_CASES[case]
    torch.manual_seed(0)
    model = setup(make_model(DWAttForTokenClassification, "bert", "dwatt", classifier_dropout=0.0))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    input_ids, attention_mask = make_batch()
    streams, streamed = record_streams(model)
    with torch.no_grad():
        torch.manual_seed(1)
        fast = model(input_ids=input_ids, attention_mask=attention_mask).logits
        torch.manual_seed(1)  # the same dropout masks, where dropout is on
        plain = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).logits
    assert len(streamed) == 1 and streamed[0] is not None
    assert isinstance(streams[0], dwatt.modeling_dwatt.DepthWiseAttentionReadoutStream) == reads_out
    torch.testing.assert_close(fast, plain, **(ROUNDING_OF_DWATT_READOUT if reads_out else dict(rtol=0, atol=0)))


def dwatt_training_step(model, value_path: str, input_ids, attention_mask, labels) -> tuple[torch.Tensor, dict]:
    """Loss, logits and every parameter's gradient after one forward and backward with DWAtt's value transforms run
    on `value_path`, with the same dropout masks as every other call."""
    model.dwatt.fusion_classifier.value_path = value_path
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()
    return output.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "settings",
    [{}, {"dwatt_shared_value_mlp": True}, {"dwatt_num_heads": 2, "dwatt_scale_scores": True, "dwatt_weight_dropout": 0.2}],
    ids=["per-source-mlps", "shared-mlp", "2-heads-scaled-dropout"],
)
def test_dwatt_per_source_and_batched_paths_train_alike(settings, model_class):
    """DWAtt's training forward runs the value transforms one source at a time on the CPU and batched elsewhere:
    the same terms in another order, so logits, loss and every gradient agree to rounding; "auto" is the former
    on a CPU, and a value_path that is neither is refused with the choices."""
    model = make_model(model_class, "bert", "dwatt", **settings).train()
    with torch.no_grad():  # non-trivial parameters: LayerNorm scales away from 1, biases away from 0
        for parameter in model.dwatt.fusion_classifier.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    input_ids, attention_mask = make_batch()
    token_level = model_class is DWAttForTokenClassification
    labels = torch.randint(0, 3, input_ids.shape if token_level else input_ids.shape[:1])
    logits, grads = dwatt_training_step(model, "batched", input_ids, attention_mask, labels)
    for path in ("per_source", "auto"):
        other_logits, other_grads = dwatt_training_step(model, path, input_ids, attention_mask, labels)
        torch.testing.assert_close(other_logits, logits, rtol=1e-5, atol=1e-6)
        assert other_grads.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(other_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    head = model.dwatt.fusion_classifier
    batched_calls = []
    values = head.value_transforms.values
    head.value_transforms.values = lambda *args: batched_calls.append(1) or values(*args)
    dwatt_training_step(model, "auto", input_ids, attention_mask, labels)
    assert not batched_calls  # auto on the CPU: one source at a time
    dwatt_training_step(model, "batched", input_ids, attention_mask, labels)
    assert batched_calls == [1]
    with pytest.raises(ValueError, match=r"value_path='stacked'.*'auto', 'batched', 'per_source'"):
        dwatt_training_step(model, "stacked", input_ids, attention_mask, labels)


@pytest.mark.parametrize("model_class", TASK_CLASSES, ids=lambda c: c.__name__)
def test_compiled_inference_takes_the_plain_path(model_class, monkeypatch):
    """Under torch.compile the no-grad forward asks the encoder for its hidden states instead of hooking its layers:
    hooks that call back into Python break the graph at every layer. The logits are those of eager inference, in one
    graph (fullgraph: transformers' own capture hooks, installed at the first forward that wants hidden states, took a
    lock that dynamo cannot trace, and eager no-grad inference never installed them)."""
    model = make_model(model_class, "bert", "dwatt").eval()
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        eager = model(input_ids=input_ids, attention_mask=attention_mask).logits

    def no_hooks(self):
        raise AssertionError("HiddenStateHooks entered while compiling")

    monkeypatch.setattr(dwatt.modeling_dwatt.HiddenStateHooks, "__enter__", no_hooks)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)(input_ids=input_ids, attention_mask=attention_mask).logits
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fusion", ["concat", "deeper", "dwatt"])
def test_dynamically_quantized_heads_run_close_to_float(model_class, fusion):
    """torch's int8 recipe swaps every nn.Linear for one whose `weight` is a method: Concat's running sum and the
    pooled deeper layer read the weights as tensors and failed ('function' object has no attribute 'view'); they now
    call such a layer. The stock BERT classifiers quantize the same way."""
    torch.manual_seed(0)
    model = make_model(model_class, "bert", fusion).eval()
    input_ids, attention_mask = make_batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        assert not any(type(module) is torch.nn.Linear for module in quantized.dwatt.fusion_classifier.modules())
        got = quantized(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool() if model_class is DWAttForTokenClassification else slice(None)
    error = (got[real] - expected[real]).abs().max() / expected[real].abs().max()
    assert error < 0.05, error  # int8 weights: about 1% here, the stock BERT classifiers' too


@pytest.mark.parametrize("fusion", ["concat", "dwatt"])
def test_streamed_inference_is_thread_safe(fusion):
    """Two threads run one model on batches of different shapes at once (a server, nn.DataParallel): hooks that saw
    the other thread's pass make their own pass take the plain path, so both get the single-threaded logits (bit for
    bit for Concat; to rounding for DWAtt, whose stream reads the sources out through the classifier one by one)."""
    import threading

    model = make_model(DWAttForTokenClassification, "bert", fusion).eval()
    batches = [make_batch(3, 9)[0], make_batch(5, 6)[0]]
    with torch.no_grad():
        expected = [model(input_ids=ids).logits for ids in batches]
    errors, start = [], threading.Barrier(2)
    tolerance = ROUNDING_OF_DWATT_READOUT if fusion == "dwatt" else dict(rtol=0, atol=0)

    def work(index: int) -> None:
        start.wait()
        try:
            for _ in range(30):
                with torch.no_grad():
                    logits = model(input_ids=batches[index]).logits
                torch.testing.assert_close(logits, expected[index], **tolerance)
        except Exception as error:  # noqa: BLE001 - reported below, with the thread that raised it
            errors.append(f"thread {index}: {error!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_streamed_inference_ignores_a_half_registered_hook_of_another_thread():
    """register_forward_pre_hook(with_kwargs=True) fills two dicts one after the other (and remove() empties them in
    turn): a forward pass of another thread in between calls the hook as hook(module, args), without kwargs. Recreated
    deterministically: while the main thread's pass is inside layer 0, the kwargs flags are hidden and a second thread
    runs the model."""
    import threading

    model = make_model(DWAttForTokenClassification, "bert", "dwatt").eval()
    first_layer = model.dwatt.encoder.encoder.layer[0]
    ids = [make_batch(3, 7)[0], make_batch(2, 5)[0]]
    with torch.no_grad():
        expected = [model(input_ids=batch).logits for batch in ids]
    main_thread, results, errors = threading.get_ident(), {}, []

    def other_thread() -> None:
        try:
            with torch.no_grad():
                results["other"] = model(input_ids=ids[1]).logits
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    def interleave(module, args, output) -> None:
        if threading.get_ident() != main_thread or "other" in results or errors:
            return
        flags = module._forward_pre_hooks_with_kwargs
        hidden = dict(flags)
        flags.clear()  # the main thread's streaming pre-hook is registered, its with_kwargs flag not (yet)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        flags.update(hidden)

    handle = first_layer.register_forward_hook(interleave)
    try:
        with torch.no_grad():
            results["main"] = model(input_ids=ids[0]).logits
    finally:
        handle.remove()
    assert not errors, errors
    torch.testing.assert_close(results["main"], expected[0], **ROUNDING_OF_DWATT_READOUT)
    torch.testing.assert_close(results["other"], expected[1], **ROUNDING_OF_DWATT_READOUT)


@pytest.mark.parametrize("pooling", ["first", "last"])
def test_pooled_deeper_stack_matches_its_full_output(pooling):
    """With two extra layers only the last stops at the pooled position; the first still runs on every token."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="deeper", deeper_num_layers=2, num_labels=3, pooling=pooling)
    model = DWAttForSequenceClassification(config).eval()
    input_ids, attention_mask = make_batch()
    positions = attention_mask.argmax(-1) if pooling == "first" else attention_mask.sum(-1) - 1  # right padding
    with torch.no_grad():
        fused = model.dwatt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        pooled = model.dwatt(input_ids=input_ids, attention_mask=attention_mask, fusion_positions=positions).last_hidden_state
    torch.testing.assert_close(pooled[:, 0], fused[torch.arange(3), positions], atol=1e-6, rtol=1e-5)


def test_last_pooling_handles_left_padding():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", num_labels=3, pooling="last")
    model = DWAttForSequenceClassification(config).eval()
    input_ids = torch.randint(4, VOCAB_SIZE, (1, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        fused = model.dwatt(input_ids=input_ids, attention_mask=mask).last_hidden_state
        expected = model.classifier.out_proj(torch.tanh(model.classifier.dense(fused[:, -1])))
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=mask).logits, expected)


@pytest.mark.parametrize("family", sorted(DECODER_FAMILIES))
def test_decoder_only_families_pool_the_last_token_by_default(family):
    assert DWAttConfig(encoder_config=tiny_encoder_config(family)).pooling == "last"
    assert DWAttConfig(encoder_config=tiny_encoder_config("bert")).pooling == "first"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_regression_and_multi_label_losses(fusion):
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion, num_labels=1)
    model = DWAttForSequenceClassification(config).eval()
    input_ids, attention_mask = make_batch()
    targets = torch.tensor([0.5, 2.0, -1.0])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=targets)
    torch.testing.assert_close(output.loss, ((output.logits.squeeze(-1) - targets) ** 2).mean())

    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion, num_labels=4, problem_type="multi_label_classification")
    model = DWAttForSequenceClassification(config).eval()
    multi_hot = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=multi_hot)
    probabilities = torch.sigmoid(output.logits)
    expected = -(multi_hot * probabilities.log() + (1 - multi_hot) * (1 - probabilities).log()).mean()
    torch.testing.assert_close(output.loss, expected)


def test_auto_classes_are_registered():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=3)
    assert type(AutoModel.from_config(config)) is dwatt.DWAttModel
    assert type(AutoModelForTokenClassification.from_config(config)) is DWAttForTokenClassification
    assert type(AutoModelForSequenceClassification.from_config(config)) is DWAttForSequenceClassification


def test_config_accepts_encoder_config_as_dict_and_round_trips(tmp_path):
    encoder_config = tiny_encoder_config("roberta")
    config = DWAttConfig(encoder_config=encoder_config.to_dict(), fusion="concat", fusion_layers=[0, -1], num_labels=7)
    assert type(config.encoder_config) is type(encoder_config)
    assert config.fusion_source_indices == [0, 3]
    config.save_pretrained(tmp_path)
    loaded = DWAttConfig.from_pretrained(tmp_path)
    assert loaded.fusion == "concat" and loaded.fusion_layers == [0, -1] and loaded.num_labels == 7
    assert loaded.encoder_config.to_dict()["hidden_size"] == 32 and loaded.encoder_config.model_type == "roberta"


@pytest.mark.parametrize("fusion_layers, expected", [("all", [0, 1, 2, 3]), ([-1, 0], [0, 3]), ([2], [2])])
def test_fusion_layers_select_the_sources(fusion_layers, expected):
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="scalar_mix", fusion_layers=fusion_layers)
    assert config.fusion_source_indices == expected
    model = DWAttModel(config)
    assert model.fusion_classifier.mix_logits.shape == (len(expected),)


def test_gradient_checkpointing_trains():
    model = make_model(DWAttForTokenClassification, "bert", "dwatt")
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable  # v5 name first
    enable()
    model.train()
    input_ids, attention_mask = make_batch()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.zeros_like(input_ids)).loss
    loss.backward()
    assert model.dwatt.encoder.embeddings.word_embeddings.weight.grad is not None


def test_a_head_fed_at_the_pooled_positions_gets_the_mask_at_those_positions():
    """Stored sources are cut to the pooled positions (B, 1, d) before the head's forward runs: the mask it gets must
    be cut the same way (it was the whole (B, T) mask, wrong for any head that reads it)."""
    from dwatt.modeling_dwatt import FusionHead, StoredSources

    class RecordingHead(FusionHead):
        def forward(self, last_hidden_state, sources, attention_mask, positions=None, output_weights=False):
            self.seen = last_hidden_state, sources, attention_mask
            return last_hidden_state, None

    states = [torch.randn(3, 5, 8) for _ in range(2)]  # (B, T, d) per source
    attention_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    positions = torch.tensor([1, 4, 2])  # (B,)
    head = RecordingHead()
    stream = StoredSources(head, attention_mask, positions)
    for slot, source in enumerate(states):
        stream.add(slot, source)
    stream.finish(states[-1], output_weights=False)
    last, sources, mask = head.seen
    rows = torch.arange(3)
    assert torch.equal(last[:, 0], states[-1][rows, positions])
    assert all(torch.equal(got[:, 0], source[rows, positions]) for got, source in zip(sources, states))
    assert torch.equal(mask, torch.tensor([[1], [1], [1]]))
    assert torch.equal(mask[:, 0], attention_mask[rows, positions])


def test_int32_labels_are_single_label_classification():
    """transformers treats int32 labels like int64 ones: cross-entropy, not the multi-label loss (which torch's
    cross-entropy then refused: it takes int64 class indices only)."""
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="last",
                                                       num_labels=3)).eval()
    input_ids = torch.randint(0, VOCAB_SIZE, (4, 5))
    labels = torch.tensor([0, 2, 1, 2], dtype=torch.int32)
    with torch.no_grad():
        output = model(input_ids=input_ids, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels.long()))
    tagger = DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="last",
                                                     num_labels=3)).eval()
    tags = torch.tensor([[0, 2, 1, -100, -100]] * 4, dtype=torch.int32)
    with torch.no_grad():
        output = tagger(input_ids=input_ids, labels=tags)
    expected = torch.nn.functional.cross_entropy(output.logits.flatten(0, 1), tags.flatten().long(), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)


def test_head_dropouts_follow_the_config(monkeypatch):
    """The deeper layer drops out as the encoder's hidden and attention dropouts do; DWAtt's weights over depth by
    dwatt_weight_dropout."""
    from dwatt import modeling_dwatt

    encoder_config = tiny_encoder_config("bert")
    encoder_config.hidden_dropout_prob, encoder_config.attention_probs_dropout_prob = 0.3, 0.2
    deeper = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion="deeper", num_labels=2)).train()
    seen = []
    real_attention = modeling_dwatt.F.scaled_dot_product_attention

    def recording_attention(*args, **kwargs):
        seen.append(kwargs.get("dropout_p"))
        return real_attention(*args, **kwargs)

    monkeypatch.setattr(modeling_dwatt.F, "scaled_dot_product_attention", recording_attention)
    deeper(input_ids=torch.randint(0, VOCAB_SIZE, (2, 5)))
    assert seen[-1] == 0.3  # the deeper layer runs last, after the encoder's own attention
    deeper.eval()(input_ids=torch.randint(0, VOCAB_SIZE, (2, 5)))
    assert seen[-1] == 0.0

    dwatt = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion="dwatt", num_labels=2,
                                                    dwatt_weight_dropout=0.25))
    assert dwatt.dwatt.fusion_classifier.weight_dropout.p == 0.25


def test_head_initialisation_follows_the_encoders_initializer_range():
    """Linear weights of the head ~ N(0, initializer_range) (0.02 only when the encoder has none); DWAtt's depth
    embeddings ~ U(0, 1)."""
    encoder_config = tiny_encoder_config("bert")
    encoder_config.initializer_range = 0.5
    torch.manual_seed(0)
    model = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion="concat", num_labels=2))
    weights = torch.cat([module.weight.detach().flatten() for module in model.dwatt.fusion_classifier.modules()
                         if isinstance(module, torch.nn.Linear)])
    assert weights.numel() > 2000 and 0.45 < float(weights.std()) < 0.55 and abs(float(weights.mean())) < 0.05
    dwatt = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion="dwatt", num_labels=2,
                                                    dwatt_position_dim=256))
    embeddings = dwatt.dwatt.fusion_classifier.depth_embeddings
    assert float(embeddings.min()) >= 0.0 and float(embeddings.max()) < 1.0
    assert abs(float(embeddings.std()) - (1 / 12) ** 0.5) < 0.03  # the uniform distribution's
