"""The quality bar's reading of the devkit summary: the NDS credit that classes with AP 0 get through
their TP errors is found, priced and shown, and the checks compare NDS with and without it."""
import math

from perception.eval.quality import _metrics, quality_markdown

NAN = float("nan")
METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


def _summary(aps, errs, nds=0.3):
    tp = {k: sum(e[k] for e in errs.values() if e[k] == e[k]) / max(1, sum(1 for e in errs.values() if e[k] == e[k]))
          for k in METRICS}
    return {"mean_ap": sum(aps.values()) / len(aps), "nd_score": nds, "mean_dist_aps": aps, "tp_errors": tp,
            "label_tp_errors": errs}


def test_ap0_class_with_scored_tp_errors_is_priced():
    errs = {"car": dict(zip(METRICS, (0.2, 0.2, 0.2, 0.2, 0.2))),
            "traffic_cone": dict(zip(METRICS, (0.4, 0.8, NAN, NAN, NAN))),
            "barrier": dict(zip(METRICS, (1.0, 1.0, 1.0, NAN, NAN)))}
    m = _metrics(_summary({"car": 0.5, "traffic_cone": 0.0, "barrier": 0.0}, errs, nds=0.3))
    # cone: translation (1 - 0.4) / 3 classes + scale (1 - 0.8) / 3 classes, over NDS's 10;
    # barrier found nothing (errors 1) and adds nothing
    assert m["ap0_tp_classes"] == ["traffic_cone"]
    assert math.isclose(m["ap0_tp_nds"], round((0.6 / 3 + 0.2 / 3) / 10, 4))
    assert math.isclose(m["NDS_no_ap0"], round(0.3 - m["ap0_tp_nds"], 4))


def test_detected_classes_get_no_price():
    errs = {"car": dict(zip(METRICS, (0.2, 0.2, 0.2, 0.2, 0.2))),
            "pedestrian": dict(zip(METRICS, (0.3, 0.3, 0.3, 0.3, 0.3)))}
    m = _metrics(_summary({"car": 0.5, "pedestrian": 0.01}, errs))
    assert m["ap0_tp_classes"] == [] and m["ap0_tp_nds"] == 0.0 and m["NDS_no_ap0"] == m["NDS"]


def test_markdown_shows_the_credit_and_the_adjusted_nds():
    errs = {"car": dict(zip(METRICS, (0.2, 0.2, 0.2, 0.2, 0.2))),
            "motorcycle": dict(zip(METRICS, (0.5, 0.5, 0.5, 0.5, 0.5)))}
    m = _metrics(_summary({"car": 0.5, "motorcycle": 0.0}, errs, nds=0.25))
    text = quality_markdown({"models": {"fusion": m}, "checks": {"x": True}})
    row = next(line for line in text.splitlines() if line.startswith("| fusion |"))
    assert f"| {m['NDS_no_ap0']:.4f} |" in row
    assert "fusion +" in text and "(motorcycle)" in text


def test_report_summary_shows_the_credit():
    from perception.eval.report import summary_lines

    errs = {"car": dict(zip(METRICS, (0.2, 0.2, 0.2, 0.2, 0.2))),
            "traffic_cone": dict(zip(METRICS, (0.4, 0.8, NAN, NAN, NAN)))}
    lines = summary_lines(_summary({"car": 0.5, "traffic_cone": 0.0}, errs, nds=0.3))
    credit = (0.6 / 2 + 0.2 / 2) / 10
    assert f"| NDS from AP-0 classes' TP errors | {credit:.4f} (traffic_cone) |" in lines
    assert f"| NDS, AP-0 classes' TP errors at 1 | {0.3 - credit:.4f} |" in lines
