"""The evaluation core behind ``coordgan evaluate``: label propagation scored on a benchmark with
the labelling core's matchers (``coordgan_cli.labelling``), beside baselines, plus correspondence
accuracy and model metrics.

    from coordgan_cli.evaluation import EvaluationRequest, evaluate_benchmark
    report = evaluate_benchmark(EvaluationRequest("synthetic", Path("faces"), store=Path("faces/correspondence.h5"),
                                                  protocol="fullres"))
    report["matchers"]["correlation"]["miou"]

* a **matcher column** is a registered labelling matcher: ``labelling.register_matcher(name,
  factory)`` makes it a column by default (when it can be built from the inputs, see
  ``columns.default_builder``) and nameable in ``--matchers``; ``columns.register_column(name,
  builder)`` when it needs other inputs;
* a **dataset layout** is one loader function: ``data.benchmarks.register_dataset(name, loader)``;
* ``protocols`` runs ``fullres`` over the matchers and ``paper`` over its own soft-label vote plus
  the matchers; ``report`` turns the result into the JSON object, table, CSV, markdown and chart;
  ``scoring`` scores label files against true masks (``coordgan demo``).
"""

from coordgan_cli.evaluation.columns import (ALWAYS_LISTED, ColumnInputs, Columns, build_columns, known_columns,
                                             register_column)
from coordgan_cli.evaluation.core import EvaluationRequest, evaluate_benchmark

__all__ = ["ALWAYS_LISTED", "ColumnInputs", "Columns", "EvaluationRequest", "build_columns", "evaluate_benchmark",
           "known_columns", "register_column"]
