"""Train/serve skew: a checkpoint records its encoder; serving another is refused unless allowed, and then the
measured decision agreement is logged. Checkpoint reading lives in barp_ray.policy.checkpoint."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from barp_ray.embeddings.encoder import DEFAULT_ENCODER, EncoderSpec
from barp_ray.policy.checkpoint import SPEC_FILE, policy_version, read_policy_spec, save_policy
from barp_ray.policy.model import BarpPolicy, PolicySpec
from barp_ray.serving.engine import EncoderMismatchError, EncodingConfig, RoutingEngine

TRAINED = EncoderSpec(DEFAULT_ENCODER, "onnx-int8", 128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, onnx_export):
    torch.manual_seed(0)
    spec = PolicySpec(
        models=["cheap", "mid", "big"], tau=0.01, encoder=TRAINED.id, embed_dim=384, pref_dim=8, hidden_dim=32
    )
    return save_policy(BarpPolicy(spec), tmp_path_factory.mktemp("policy") / "policy")


def test_checkpoint_records_the_encoder_it_was_trained_with(checkpoint):
    doc = json.loads((checkpoint / SPEC_FILE).read_text())
    assert doc["spec"]["encoder"] == f"{DEFAULT_ENCODER}@onnx-int8:128"
    assert doc["encoder_spec"] == {
        "id": TRAINED.id,
        "name": DEFAULT_ENCODER,
        "backend": "onnx-int8",
        "max_seq_length": 128,
        "truncation": "right",
    }
    assert read_policy_spec(checkpoint)["encoder"] == TRAINED.id and len(policy_version(checkpoint)) == 16


def test_serving_uses_the_training_encoder_by_default(checkpoint):
    engine = RoutingEngine(str(checkpoint), options=EncodingConfig(device="cpu", threads=1))
    assert engine.served_encoder.same_encoder(TRAINED) and engine.encoder_agreement is None
    probs = engine.forward(["hello", "Write a python function to reverse a string."], [0.2, 0.8])
    assert probs.shape == (2, 3)


@pytest.mark.parametrize(
    "override",
    [{"backend": "torch"}, {"max_seq_length": 256}, {"truncation": "left"}, {"backend": "onnx", "max_seq_length": 64}],
)
def test_another_encoder_is_refused(checkpoint, override):
    with pytest.raises(EncoderMismatchError) as err:
        RoutingEngine(str(checkpoint), options=EncodingConfig(device="cpu", **override))
    message = str(err.value)
    assert TRAINED.id in message and "allow_encoder_mismatch" in message


def test_explicit_override_serves_and_logs_the_measured_agreement(checkpoint, caplog):
    options = EncodingConfig(device="cpu", threads=1, backend="onnx", max_seq_length=256, allow_encoder_mismatch=True)
    with caplog.at_level(logging.WARNING, logger="barp_ray.serving.engine"):
        engine = RoutingEngine(str(checkpoint), options=options)
    assert engine.served_encoder.id == f"{DEFAULT_ENCODER}@onnx:256"
    assert 0.0 <= engine.encoder_agreement <= 1.0
    logged = [r.getMessage() for r in caplog.records if "decision agreement" in r.getMessage()]
    assert len(logged) == 1 and f"{100 * engine.encoder_agreement:.1f}%" in logged[0]
    assert TRAINED.id in logged[0] and engine.served_encoder.id in logged[0]


def test_engine_decision_cache_and_shared_encoder(checkpoint):
    engine = RoutingEngine(
        str(checkpoint), options=EncodingConfig(device="cpu", threads=1, decision_cache_bytes=1_000_000)
    )
    cache = engine.decision_cache
    first = engine.forward(["same prompt", "same prompt"], [0.1, 0.9])
    second = engine.forward(["same prompt"], [0.1])
    assert np.allclose(first[0], second[0]) and cache.stats.misses == 2 and cache.stats.hits == 1
    rolled = RoutingEngine(str(checkpoint), encoder_model=engine.encoder, options=EncodingConfig(device="cpu"))
    assert rolled.encoder is engine.encoder  # a rollout keeps the encoder and its cache
    off = RoutingEngine(str(checkpoint), options=EncodingConfig(device="cpu", decision_cache_bytes=0))
    assert off.decision_cache is None


def test_engine_module_reexports_checkpoint_readers():
    from barp_ray.policy import checkpoint
    from barp_ray.serving import engine

    assert engine.read_policy_spec is checkpoint.read_policy_spec
    assert engine.policy_version is checkpoint.policy_version
    assert engine.read_checkpoint_file is checkpoint.read_checkpoint_file


def test_evaluation_refuses_embeddings_of_another_encoder():
    from barp_ray.evaluation.barp_router import check_same_encoder

    check_same_encoder(DEFAULT_ENCODER, f"{DEFAULT_ENCODER}@torch:256")  # the same encoder, two spellings
    check_same_encoder(TRAINED.id, None)  # a table that records no encoder is not checked
    with pytest.raises(ValueError, match="re-embed"):
        check_same_encoder(TRAINED.id, DEFAULT_ENCODER)
