"""Per-view logits -> per-video scores, and the reference metrics."""

import numpy as np
import pytest

from harness.scores import average_views, mean_class_accuracy, top_k, top_k_accuracy


def test_prob_averaging_is_softmax_then_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2 * 3, 5)).astype(np.float32)
    scores = average_views(logits, views=3, mode="prob")
    expected = []
    for video in logits.reshape(2, 3, 5):
        probs = np.exp(video) / np.exp(video).sum(axis=1, keepdims=True)
        expected.append(probs.mean(axis=0))
    np.testing.assert_allclose(scores, np.array(expected), rtol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)
    assert scores.dtype == np.float32


def test_score_averaging_is_plain_mean():
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(average_views(logits, 2, "score"), [[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]])


def test_wrong_view_count_is_an_error():
    with pytest.raises(ValueError):
        average_views(np.zeros((5, 3)), 2)


def test_top_k_accuracy_and_mean_class_accuracy():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    labels = np.array([0, 1, 1, 0])
    assert top_k(scores, 2).tolist() == [[0, 1], [1, 0], [0, 1], [2, 1]]
    assert top_k_accuracy(scores, labels, 1) == 0.5
    assert top_k_accuracy(scores, labels, 2) == 0.75
    # class 0: 1 of 2 right; class 1: 1 of 2 right
    assert mean_class_accuracy(scores, labels) == 0.5
    imbalanced = np.array([0, 0, 0, 1])
    preds = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=float)
    assert mean_class_accuracy(preds, imbalanced) == 0.5  # (3/3 + 0/1) / 2
