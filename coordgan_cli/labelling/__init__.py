"""The labelling core: references, matchers and the propagator behind ``coordgan propagate``.

    from coordgan_cli import References, label_folder
    refs = References.from_pairs([("ref.png", "ref_mask.png")])
    summary = label_folder(refs, "photos/", "out/", matcher="correlation")

``References`` (validated once) → a ``Matcher`` (registry: ``make_matcher``, ``register_matcher``)
fitted on them → ``Propagator`` / ``label_folder`` streaming the queries into files, resumably.
No module here imports torch at import time.
"""

from coordgan_cli.labelling.matchers import (CoordinatesMatcher, CorrelationMatcher, EnsembleMatcher, Matcher,
                                             MatcherBase, Prediction, available_matchers, make_matcher,
                                             register_matcher)
from coordgan_cli.labelling.propagator import Propagator, QueryList, label_folder
from coordgan_cli.labelling.references import References

__all__ = ["CoordinatesMatcher", "CorrelationMatcher", "EnsembleMatcher", "Matcher", "MatcherBase", "Prediction",
           "Propagator", "QueryList", "References", "available_matchers", "label_folder", "make_matcher",
           "register_matcher"]
