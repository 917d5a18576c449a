"""Every zoo model the benchmark can be asked for has a metric, a headline and sample sets: a
model added to the zoo without them crashed the run only after it had quantized every model
before it (efficientnet-lite0-dynamo, session 27)."""
from benchmarks.run import HEADLINE, METRIC
from calibration.sets import SETS
from models.build import BUILDERS


def test_every_zoo_model_has_a_metric_a_headline_and_samples():
    assert set(BUILDERS) - set(METRIC) == set()
    assert set(BUILDERS) - set(HEADLINE) == set()
    assert set(BUILDERS) - set(SETS) == set()


def test_label_sequences_and_speech_probability_metrics():
    import numpy as np

    from benchmarks.metrics import label_sequences, speech_probability

    ref = [np.array([[1.0, 2.0, 3.0]]), np.array([[4.0, 5.0]])]
    got = [np.array([[1.0, 2.0, 0.0]]), np.array([[4.0, 5.0]])]
    assert label_sequences(ref, got) == {"sequence_agreement": 0.5, "step_agreement": (2 / 3 + 1) / 2}
    assert label_sequences(ref, [np.array([[1.0, 2.0]]), ref[1]])["step_agreement"] == 0.5  # a length differs
    probs = speech_probability([np.array([[0.9]]), np.array([[0.2]])], [np.array([[0.4]]), np.array([[0.1]])])
    assert probs["decision_agreement"] == 0.5 and abs(probs["prob_mae"] - 0.3) < 1e-12
