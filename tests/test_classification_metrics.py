"""medad.metrics.classification against hand-computed confusion matrices."""
import pytest

from medad.errors import ConfigError
from medad.metrics import classification as cm


def test_binary_report_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    p = [1, 1, 0, 1, 0, 0, 0, 0]  # TP 2, FN 1, FP 1, TN 4
    r = cm.binary_report(y, p, scores=[0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.35])
    assert r["accuracy"] == pytest.approx(6 / 8)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["specificity"] == pytest.approx(4 / 5) and r["f1"] == pytest.approx(2 / 3)
    assert r["auc"] == pytest.approx(12 / 15)  # 12 of the 15 positive-negative pairs ranked right


def test_macro_f1_and_errors():
    assert cm.macro_f1([0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert cm.accuracy([0, 1], [0, 0]) == 0.5
    with pytest.raises(ConfigError, match="both classes"):
        cm.roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ConfigError, match="non-finite"):
        cm.roc_auc([0, 1], [0.2, float("nan")])
    with pytest.raises(ConfigError, match="as many predictions"):
        cm.accuracy([0, 1], [0])
