"""Evaluation metrics (nnctl.report.metrics) and table helpers against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnctl.report.metrics import (classification_report, confusion_matrix, per_class_scores,
                                  regression_report, top_k_accuracy, top_k_hits, top_k_values)
from nnctl.report.tables import sparkline, thin_rows

# Ten samples, three classes. Pairs (true, predicted):
#   (0,0) (0,1) (0,0) (1,1) (1,2) (2,2) (2,2) (2,0) (2,2) (0,1)
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
Y_PRED = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 1])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    # rows true, columns predicted
    assert cm.tolist() == [[2, 2, 0],
                           [0, 1, 1],
                           [1, 0, 3]]
    assert cm.dtype == np.int64


def test_per_class_scores_by_hand():
    s = per_class_scores(confusion_matrix(Y_TRUE, Y_PRED, 3))
    # precision = diagonal / column sum (3, 3, 4); recall = diagonal / row sum (4, 2, 4)
    assert s["precision"] == pytest.approx([2 / 3, 1 / 3, 3 / 4], abs=1e-15)
    assert s["recall"] == pytest.approx([1 / 2, 1 / 2, 3 / 4], abs=1e-15)
    # F1 = 2PR/(P+R): (2*2/3*1/2)/(2/3+1/2) = 4/7, (2*1/3*1/2)/(1/3+1/2) = 2/5, 3/4
    assert s["f1"] == pytest.approx([4 / 7, 2 / 5, 3 / 4], abs=1e-15)
    assert s["support"].tolist() == [4, 2, 4]


def test_classification_report_averages_by_hand():
    rep = classification_report(Y_TRUE, Y_PRED, 3)
    assert rep["n"] == 10
    assert rep["accuracy"] == pytest.approx(0.6, abs=1e-15)
    macro, weighted = rep["macro_avg"], rep["weighted_avg"]
    assert macro["precision"] == pytest.approx((2 / 3 + 1 / 3 + 3 / 4) / 3, abs=1e-15)   # 7/12
    assert macro["recall"] == pytest.approx(7 / 12, abs=1e-15)
    assert macro["f1"] == pytest.approx(241 / 420, abs=1e-15)                             # (4/7+2/5+3/4)/3
    assert weighted["precision"] == pytest.approx(19 / 30, abs=1e-15)                    # (4*2/3+2*1/3+4*3/4)/10
    assert weighted["recall"] == pytest.approx(0.6, abs=1e-15)                           # = accuracy
    assert weighted["f1"] == pytest.approx(213 / 350, abs=1e-15)                         # (4*4/7+2*2/5+4*3/4)/10
    assert macro["support"] == weighted["support"] == 10
    assert rep["confusion_matrix"] == [[2, 2, 0], [0, 1, 1], [1, 0, 3]]


def test_zero_division_and_absent_classes():
    # class 1 is never predicted (precision 0/0 -> 0), class 2 never occurs at all
    rep = classification_report(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)
    per = rep["per_class"]
    assert per["precision"] == pytest.approx([2 / 3, 0.0, 0.0])
    assert per["recall"] == pytest.approx([1.0, 0.0, 0.0])
    assert per["f1"] == pytest.approx([0.8, 0.0, 0.0])        # 2*(2/3)*1/(2/3+1)
    assert per["support"] == [2, 1, 0]
    # macro over the classes that occur (0 and 1), not the absent class 2
    assert rep["macro_avg"]["precision"] == pytest.approx(1 / 3)
    assert rep["macro_avg"]["recall"] == pytest.approx(0.5)
    assert rep["macro_avg"]["f1"] == pytest.approx(0.4)
    assert rep["weighted_avg"]["precision"] == pytest.approx(4 / 9)
    assert rep["weighted_avg"]["f1"] == pytest.approx(8 / 15)


def test_metrics_reject_bad_labels():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="2 samples, y_pred 1"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 3)


SCORES = np.array([[0.1, 0.5, 0.3, 0.1],     # true 2: one class scores higher -> rank 1
                   [0.7, 0.1, 0.1, 0.1],     # true 0: rank 0
                   [0.2, 0.2, 0.5, 0.1],     # true 1: class 2 higher, class 0 ties -> rank 1
                   [0.05, 0.15, 0.3, 0.5]])  # true 0: three classes higher -> rank 3
SCORE_TRUE = np.array([2, 0, 1, 0])


@pytest.mark.parametrize("k, expected", [(1, 1 / 4), (2, 3 / 4), (3, 3 / 4), (4, 1.0)])
def test_top_k_accuracy_by_hand(k, expected):
    assert top_k_accuracy(SCORE_TRUE, SCORES, k) == expected


def test_top_k_hits_and_argmax_agree_for_k1():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, 6))
    y = rng.integers(0, 6, 50)
    assert np.array_equal(top_k_hits(y, z, 1), np.argmax(z, axis=1) == y)
    assert top_k_values(10) == [3, 5] and top_k_values(4) == [3] and top_k_values(3) == []


def test_regression_report_one_output_by_hand():
    # errors 0, 0, 0, -2: MSE 4/4 = 1, MAE 2/4, SS_res 4, SS_tot (mean 2.5) = 5 -> R2 = 1 - 4/5
    rep = regression_report(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 2.0]))
    assert rep["n"] == 4
    assert rep["mse"] == pytest.approx(1.0, abs=1e-15)
    assert rep["rmse"] == pytest.approx(1.0, abs=1e-15)
    assert rep["mae"] == pytest.approx(0.5, abs=1e-15)
    assert rep["r2"] == pytest.approx(0.2, abs=1e-15)


def test_regression_report_two_outputs_by_hand():
    y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0], [4.0, 6.0]])
    p = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [2.0, 6.0]])
    rep = regression_report(y, p)
    # output 1: errors 1, 0, -1, 0 -> MSE 0.5, MAE 0.5, SS_res 2, SS_tot (mean 3) 20 -> R2 0.9
    assert rep["per_output"]["mse"] == pytest.approx([1.0, 0.5])
    assert rep["per_output"]["mae"] == pytest.approx([0.5, 0.5])
    assert rep["per_output"]["r2"] == pytest.approx([0.2, 0.9])
    assert rep["mse"] == pytest.approx(0.75)
    assert rep["rmse"] == pytest.approx((1.0 + math.sqrt(0.5)) / 2)   # mean of per-output RMSE
    assert rep["mae"] == pytest.approx(0.5)
    assert rep["r2"] == pytest.approx(0.55)


def test_r2_of_a_constant_target():
    assert regression_report(np.array([3.0, 3.0, 3.0]), np.array([3.0, 3.0, 3.0]))["r2"] == 1.0
    assert regression_report(np.array([3.0, 3.0, 3.0]), np.array([3.0, 3.0, 4.0]))["r2"] == 0.0


def test_sparkline_levels():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([7, 0]) == "█▁"
    # shared scale: 4 of 0..8 is level floor(3.5 + 0.5) = 4
    assert sparkline([4], lo=0, hi=8) == "▅"
    assert sparkline([1, None, float("nan"), 3]) == "▁  █"
    assert sparkline([2, 2, 2]) == "▁▁▁"
    # shrinking averages equal runs: (0+0)/2, (7+7)/2
    assert sparkline([0, 0, 7, 7], width=2) == "▁█"


def test_thin_rows_keeps_first_best_and_last():
    assert thin_rows(5, 10) == [0, 1, 2, 3, 4]
    rows = thin_rows(100, 5, keep=[37])
    assert rows[0] == 0 and rows[-1] == 99 and 37 in rows
    assert rows == sorted(rows) and len(rows) <= 6
