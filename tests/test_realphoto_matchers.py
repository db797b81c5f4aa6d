"""The pretrained-feature matchers (``features``, ``classifier``) and their shared helpers, on tiny
synthetic images with the shipped Inception at a small working resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordgan_cli.backbones import load_backbone
from coordgan_cli.correspondence.feature_matcher import FeatureVoteMatcher
from coordgan_cli.correspondence.hypercolumns import (HypercolumnEncoder, flip_mask, mirror_pairs, position_channels,
                                                      soft_labels)
from coordgan_cli.correspondence.pixel_classifier import PixelClassifierMatcher

RED, BLUE, GREY = (220, 30, 30), (30, 40, 220), (128, 128, 128)


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return HypercolumnEncoder(load_backbone("inception", layers=["conv_4", "mixed_2"], stride=8), working_size=128)


def halves(h, w, left, right):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = left
    image[:, w // 2:] = right
    return image


def halves_mask(h, w, left=1, right=2):
    mask = np.full((h, w), left, np.uint8)
    mask[:, w // 2:] = right
    return mask


def interior_accuracy(pred, truth, margin):
    """Accuracy away from the vertical boundary (the features' stride blurs the edge itself)."""
    w = truth.shape[1]
    cols = np.r_[0: w // 2 - margin, w // 2 + margin: w]
    return float((pred[:, cols] == truth[:, cols]).mean())


def labels_of(matcher, image):
    probs, conf = matcher.predict_proba(image)
    assert probs.shape == (len(matcher.classes),) + image.shape[:2] and probs.dtype == np.float32
    assert conf.shape == image.shape[:2] and conf.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert np.all((conf >= 0) & (conf <= 1 + 1e-6))
    return np.asarray(matcher.classes)[probs.argmax(axis=0)]


MATCHERS = {
    "features": lambda enc: FeatureVoteMatcher(enc, k=8, temperature=0.05, position_weight=0.0, dims=0),
    "features-pca": lambda enc: FeatureVoteMatcher(enc, k=8, temperature=0.05, position_weight=0.0, dims=16),
    "classifier": lambda enc: PixelClassifierMatcher(enc, members=2, dims=16, hidden=32, steps=60, position=False),
}


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_colours_decide_the_labels_at_any_size(encoder, kind):
    ref = halves(96, 96, RED, BLUE)
    matcher = MATCHERS[kind](encoder).fit_arrays([ref], [halves_mask(96, 96)])
    assert matcher.classes == [1, 2]
    # A query of another size and aspect, with the colours the other way round: appearance
    # (not position) must decide, so the left half is now class 2.
    query = halves(70, 150, BLUE, RED)
    assert interior_accuracy(labels_of(matcher, query), halves_mask(70, 150, 2, 1), margin=20) > 0.95


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_identical_query_gives_the_reference_mask_back(encoder, kind):
    rng = np.random.default_rng(0)
    image = np.full((128, 128, 3), GREY, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    for cls, colour, (y, x) in ((1, RED, (20, 20)), (2, BLUE, (70, 30)), (3, (40, 200, 40), (40, 80))):
        image[y:y + 40, x:x + 40] = colour
        mask[y:y + 40, x:x + 40] = cls
    image = np.clip(image.astype(int) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    matcher = MATCHERS[kind](encoder).fit_arrays([image], [mask])
    assert matcher.classes == [0, 1, 2, 3]
    assert (labels_of(matcher, image) == mask).mean() > 0.9


def test_position_term_breaks_ties_between_identical_looking_halves(encoder):
    # Both halves grey: appearance cannot tell them apart, position can.
    ref = halves(96, 96, GREY, GREY)
    matcher = FeatureVoteMatcher(encoder, k=8, position_weight=1.0).fit_arrays([ref], [halves_mask(96, 96)])
    query = halves(64, 128, GREY, GREY)
    assert interior_accuracy(labels_of(matcher, query), halves_mask(64, 128), margin=16) > 0.95
    clf = PixelClassifierMatcher(encoder, members=2, dims=8, hidden=32, steps=100, position=True).fit_arrays(
        [ref], [halves_mask(96, 96)])
    assert interior_accuracy(labels_of(clf, query), halves_mask(64, 128), margin=16) > 0.95


def test_flipped_references_rename_left_and_right(encoder):
    # One reference: a red "left" part on the left. Mirrored, it shows the red part on the
    # right as the "right" class; a query with red on the right must get the right class.
    ref = halves(96, 96, RED, GREY)
    mask = halves_mask(96, 96, 1, 0)
    names = {0: "background", 1: "left_part", 2: "right_part"}
    swap = mirror_pairs(names)
    matcher = FeatureVoteMatcher(encoder, k=8, position_weight=0.5, flip_swap=swap).fit_arrays(
        [ref], [mask], classes=[0, 1, 2])
    pred = labels_of(matcher, halves(96, 96, GREY, RED))
    assert interior_accuracy(pred, halves_mask(96, 96, 0, 2), margin=16) > 0.95
    # Left to find the classes itself, the matcher counts the mirrored one too.
    found = FeatureVoteMatcher(encoder, k=8, position_weight=0.5, flip_swap=swap).fit_arrays([ref], [mask])
    assert found.classes == [0, 1, 2]
    # Without flips the right class is never predicted: no reference shows it.
    plain = FeatureVoteMatcher(encoder, k=8, position_weight=0.5).fit_arrays([ref], [mask], classes=[0, 1, 2])
    assert not (labels_of(plain, halves(96, 96, GREY, RED)) == 2).any()


def test_layout_picks_the_reference_facing_the_same_way(encoder):
    # The reference and its mirrored copy hold the same red square, labelled "left_part" and
    # "right_part": local appearance ties. Choosing the best-laid-out reference decides.
    ref = np.full((96, 96, 3), GREY, np.uint8)
    ref[24:72, 8:40] = RED
    mask = np.zeros((96, 96), np.uint8)
    mask[24:72, 8:40] = 1
    swap = {0: 0, 1: 2, 2: 1}
    query = ref.copy()
    picked = FeatureVoteMatcher(encoder, k=8, position_weight=0.0, dims=0, flip_swap=swap,
                                top_references=1).fit_arrays([ref], [mask], [0, 1, 2])
    pred = labels_of(picked, query)
    assert (pred[30:66, 14:34] == 1).mean() > 0.95
    mirrored = labels_of(picked, np.ascontiguousarray(query[:, ::-1]))
    assert (mirrored[30:66, 62:82] == 2).mean() > 0.95
    # Every reference voting: the red cells draw both classes.
    both = FeatureVoteMatcher(encoder, k=8, position_weight=0.0, dims=0, flip_swap=swap).fit_arrays([ref], [mask], [0, 1, 2])
    probs, _ = both.predict_proba(query)
    assert probs[2, 30:66, 14:34].mean() > 0.2


def test_classifier_confidence_reflects_agreement(encoder):
    ref = halves(96, 96, RED, BLUE)
    clf = PixelClassifierMatcher(encoder, members=3, dims=16, hidden=32, steps=60, position=False).fit_arrays(
        [ref], [halves_mask(96, 96)])
    _, conf = clf.predict_proba(halves(96, 96, RED, BLUE))
    assert conf[:, 5:30].mean() > 0.9
    probs, agreement = clf.predict_grid(halves(96, 96, RED, BLUE))
    assert agreement.shape == probs.shape[1:] and set(np.unique(agreement)) <= {0.0, 1 / 3, 2 / 3, 1.0}


def test_matchers_are_deterministic(encoder):
    ref, mask = halves(64, 64, RED, BLUE), halves_mask(64, 64)
    a = PixelClassifierMatcher(encoder, members=2, dims=8, hidden=16, steps=20, seed=5).fit_arrays([ref], [mask])
    b = PixelClassifierMatcher(encoder, members=2, dims=8, hidden=16, steps=20, seed=5).fit_arrays([ref], [mask])
    q = halves(50, 70, BLUE, RED)
    np.testing.assert_array_equal(a.predict_proba(q)[0], b.predict_proba(q)[0])


def test_fit_checks_its_inputs(encoder):
    m = FeatureVoteMatcher(encoder)
    with pytest.raises(ValueError, match="differ in size"):
        m.fit_arrays([halves(64, 64, RED, BLUE)], [np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        m.fit_arrays([np.zeros((64, 64), np.uint8)], [np.zeros((64, 64), np.uint8)])
    with pytest.raises(RuntimeError, match="fit"):
        FeatureVoteMatcher(encoder).predict_proba(halves(64, 64, RED, BLUE))


# --- helpers ---------------------------------------------------------------------------------

def test_mirror_pairs_from_names():
    cars = {0: "background", 3: "back_left_door", 5: "back_right_door", 13: "hood", 14: "left_mirror",
            15: "right_mirror"}
    assert mirror_pairs(cars) == {0: 0, 3: 5, 5: 3, 13: 13, 14: 15, 15: 14}
    faces = {1: "skin", 4: "l_eye", 5: "r_eye", 8: "l_ear", 9: "r_ear", 15: "ear_r"}
    assert mirror_pairs(faces) == {1: 1, 4: 5, 5: 4, 8: 9, 9: 8, 15: 15}


def test_flip_mask_mirrors_and_renames():
    mask = np.array([[1, 0, 2], [1, 255, 0]], np.uint8)
    np.testing.assert_array_equal(flip_mask(mask, {1: 2, 2: 1}), [[1, 0, 2], [0, 255, 2]])
    np.testing.assert_array_equal(flip_mask(mask, None), mask[:, ::-1])


def test_soft_labels_are_area_shares():
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :2] = 1
    mask[0, :] = 255
    shares = soft_labels(mask, [0, 1], (2, 2))
    # Top-left 4×4 cell: 4 ignored, 6 of class 1, 6 of class 0.
    np.testing.assert_allclose(shares[:, 0, 0], [6 / 16, 6 / 16])
    np.testing.assert_allclose(shares[:, 1, 1], [1.0, 0.0])


def test_position_channels():
    pos = position_channels((2, 4), frequencies=1)
    assert pos.shape == (6, 2, 4)
    np.testing.assert_allclose(pos[0, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(pos[1, :, 0], [-0.5, 0.5])


# --- the labelling core's Matcher contract -----------------------------------------------------

@pytest.mark.parametrize("name", ["features", "classifier"])
def test_registered_and_fitted_on_references(name):
    from coordgan_cli.io.masks import LabelSet
    from coordgan_cli.labelling import Matcher, References, make_matcher

    labels = LabelSet(names={0: "background", 1: "left_part", 2: "right_part", 3: "unused"}, colours={})
    ref, mask = halves(96, 96, RED, BLUE), halves_mask(96, 96)
    refs = References.from_pairs([(ref, mask)], labels=labels)
    options = {"members": 2, "dims": 8, "hidden": 16, "steps": 40} if name == "classifier" else {"k": 8}
    matcher = make_matcher(name, work_size=128, layers=["conv_4", "mixed_2"], flip_swap="auto", **options)
    assert isinstance(matcher, Matcher) and matcher.name == name
    matcher.fit(refs)
    assert matcher.classes == list(refs.classes) == [0, 1, 2, 3]
    query = halves(60, 90, RED, BLUE)
    probs, conf = matcher.predict_proba(query)
    assert probs.shape == (4, 60, 90) and conf.shape == (60, 90)
    labels_map, confidence = matcher.predict(query)
    assert labels_map.dtype == np.uint8 and set(np.unique(labels_map)) <= {0, 1, 2, 3}
    # Class 0 and 3 appear in no reference: (almost) never predicted.
    assert np.isin(labels_map, [1, 2]).mean() > 0.95


def test_propagate_cli_runs_the_features_matcher_on_mixed_sizes(tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from coordgan_cli.cli import app

    Image.fromarray(halves(64, 64, RED, BLUE)).save(tmp_path / "ref.png")
    Image.fromarray(halves_mask(64, 64), mode="L").save(tmp_path / "ref_mask.png")
    (tmp_path / "q").mkdir()
    Image.fromarray(halves(48, 80, BLUE, RED)).save(tmp_path / "q" / "a.jpg", quality=95)
    Image.fromarray(halves(90, 60, RED, BLUE)).save(tmp_path / "q" / "b.png")
    result = CliRunner().invoke(app, ["--quiet", "--device", "cpu", "propagate", "--matcher", "features",
                                      "--ref", str(tmp_path / "ref.png"), "--mask", str(tmp_path / "ref_mask.png"),
                                      "--queries", str(tmp_path / "q"), "--out", str(tmp_path / "out"),
                                      "--work-size", "96", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["count"] == 2 and summary["matcher"] == "features"
    from coordgan_cli.io.masks import read_mask

    a = read_mask(tmp_path / "out" / "labels" / "a.png")
    assert a.shape == (48, 80) and interior_accuracy(a, halves_mask(48, 80, 2, 1), margin=12) > 0.95
    assert read_mask(tmp_path / "out" / "labels" / "b.png").shape == (90, 60)
    bad = CliRunner().invoke(app, ["--quiet", "propagate", "--matcher", "features", "--work-size", "8",
                                   "--ref", str(tmp_path / "ref.png"), "--mask", str(tmp_path / "ref_mask.png"),
                                   "--queries", str(tmp_path / "q"), "--out", str(tmp_path / "out2")])
    assert bad.exit_code == 2 and "--work-size must be at least 75 px for the inception backbone, got 8" in bad.output


def _asymmetric_scene():
    """A red "left_part" near the left edge and a green body part (unpaired) beside it."""
    ref = np.full((96, 96, 3), GREY, np.uint8)
    ref[24:72, 8:36] = RED
    ref[30:66, 44:80] = (40, 200, 40)
    mask = np.zeros((96, 96), np.uint8)
    mask[24:72, 8:36] = 1
    mask[30:66, 44:80] = 3
    return ref, mask


def test_view_side_gives_a_mirrored_query_the_mirrored_names(encoder):
    # Red looks the same locally as given and mirrored: the pooled vote mixes left and right.
    ref, mask = _asymmetric_scene()
    names = {0: "background", 1: "left_part", 2: "right_part", 3: "body"}
    pooled = FeatureVoteMatcher(encoder, k=8, position_weight=0.0, dims=0).fit_arrays([ref], [mask], names=names)
    probs, _ = pooled.predict_proba(ref)
    assert probs[pooled.classes.index(2), 30:66, 14:30].mean() > 0.1
    view = FeatureVoteMatcher(encoder, k=8, position_weight=0.0, dims=0, side="view").fit_arrays(
        [ref], [mask], names=names)
    assert view.classes == [0, 1, 2, 3] and view._pairs == [(1, 2)]
    # The side is one decision per query: as given → left, mirrored → right, same part shape.
    assert (labels_of(view, ref)[30:66, 14:30] == 1).mean() > 0.95
    mirrored = labels_of(view, np.ascontiguousarray(ref[:, ::-1]))
    assert (mirrored[30:66, 66:82] == 2).mean() > 0.95
    assert (mirrored[36:60, 22:46] == 3).mean() > 0.95  # the unpaired part is untouched


def test_assign_sides_keeps_the_pair_total_and_takes_the_split():
    matcher = FeatureVoteMatcher.__new__(FeatureVoteMatcher)
    matcher._pairs = [(1, 2)]
    pooled = torch.tensor([[0.2, 0.5, 0.1, 0.2], [0.1, 0.0, 0.0, 0.9]])
    sided = torch.tensor([[0.0, 0.1, 0.3, 0.6], [0.5, 0.0, 0.0, 0.5]])
    out = matcher.assign_sides(pooled, sided)
    # Row 0: the pair's 0.6 split 1:3 (up to the tiny smoothing); row 1: no side evidence → halves.
    torch.testing.assert_close(out[0], torch.tensor([0.2, 0.15, 0.45, 0.2]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1], pooled[1])
    torch.testing.assert_close(out.sum(dim=1), pooled.sum(dim=1))


def test_background_weight_and_side_checks(encoder):
    ref, mask = _asymmetric_scene()
    plain = FeatureVoteMatcher(encoder, k=8, position_weight=0.0, dims=0).fit_arrays([ref], [mask])
    lean = FeatureVoteMatcher(encoder, k=8, position_weight=0.0, dims=0, background_weight=0.1).fit_arrays(
        [ref], [mask])
    p0, _ = plain.predict_proba(ref)
    p1, _ = lean.predict_proba(ref)
    assert (p1[0] < p0[0] - 1e-3).mean() > 0.01 and np.all(p1[0] <= p0[0] + 1e-5)
    assert (labels_of(lean, ref) != 0).sum() >= (labels_of(plain, ref) != 0).sum()
    with pytest.raises(ValueError, match="side must be"):
        FeatureVoteMatcher(encoder, side="both")


@pytest.mark.parametrize("name", ["features", "classifier"])
def test_work_size_below_the_backbones_minimum_is_one_clear_error(name):
    from coordgan_cli.errors import UserError
    from coordgan_cli.labelling import make_matcher

    with pytest.raises(UserError, match="at least 75 px for the inception backbone, got 64"):
        make_matcher(name, work_size=64)
    assert make_matcher(name, work_size=75).encoder.working_size == 75


def test_class_balance_weights_follow_the_part_areas():
    matcher = FeatureVoteMatcher.__new__(FeatureVoteMatcher)
    matcher.classes, matcher.class_balance = [0, 1, 2, 3], 0.5
    areas = torch.tensor([100.0, 10.0, 40.0, 0.0])
    # Part shares of the mean part area (25): 0.4 and 1.6 → weights 0.4^-½, 1.6^-½; background 1;
    # the absent class 3 gets the largest part weight.
    expected = torch.tensor([1.0, 0.4 ** -0.5, 1.6 ** -0.5, 0.4 ** -0.5])
    torch.testing.assert_close(matcher.balance_weights(areas), expected)
    matcher.class_balance = 0.0
    torch.testing.assert_close(matcher.balance_weights(areas), torch.ones(4))
    with pytest.raises(ValueError, match="class_balance must be >= 0"):
        FeatureVoteMatcher(None, class_balance=-1)


def test_class_balance_lifts_a_small_part_over_a_large_one(encoder):
    """Same appearance, unequal areas: the plain vote hands the shared texture to the class the
    references hold more of; balancing divides that prior out, and nothing else changes."""
    ref = np.full((128, 128, 3), GREY, np.uint8)
    ref[16:112, 16:112] = RED
    mask = np.zeros((128, 128), np.uint8)
    mask[16:112, 16:88] = 1   # the large part: three quarters of the red square
    mask[16:112, 88:112] = 2  # the small part: the same red, a quarter
    plain = FeatureVoteMatcher(encoder, k=16, position_weight=0.0, dims=0, class_balance=0.0,
                               refine=False).fit_arrays([ref], [mask])
    balanced = FeatureVoteMatcher(encoder, k=16, position_weight=0.0, dims=0, class_balance=1.0,
                                  refine=False).fit_arrays([ref], [mask])
    query = np.full((96, 96, 3), GREY, np.uint8)
    query[24:72, 24:72] = RED  # red, nowhere near either part's place in the reference
    g0, g1 = plain.predict_grid(query), balanced.predict_grid(query)
    centre = (slice(5, 7), slice(5, 7))  # grid cells inside the red square, away from its edges
    assert float(g0[1][centre].mean()) > float(g0[2][centre].mean())
    assert float(g1[2][centre].mean() / g1[1][centre].mean()) > 1.5 * float(g0[2][centre].mean() / g0[1][centre].mean())
    # Exactly the plain vote times the weights, renormalised.
    w = balanced._balance.numpy()[:, None, None]
    expected = g0 * w / (g0 * w).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(g1, expected, atol=1e-5)


def test_classifier_class_balance_reweights_each_members_probabilities(encoder):
    ref = np.full((128, 128, 3), GREY, np.uint8)
    ref[16:112, 16:112] = RED
    mask = np.zeros((128, 128), np.uint8)
    mask[16:112, 16:88], mask[16:112, 88:112] = 1, 2
    kw = dict(members=2, dims=16, hidden=16, steps=40, position=False, refine=False)
    plain = PixelClassifierMatcher(encoder, class_balance=0.0, **kw).fit_arrays([ref], [mask])
    balanced = PixelClassifierMatcher(encoder, class_balance=1.0, **kw).fit_arrays([ref], [mask])
    # Trained alike (same seeds): only the prior differs. Class 2 holds a quarter of the part cells.
    assert bool((plain._balance == 1).all())
    w = balanced._balance
    assert w[0] == 1 and w[2] > 1 > w[1]
    g0, a0 = plain.predict_grid(ref)
    g1, _ = balanced.predict_grid(ref)
    x = (plain._cells(encoder.encode([ref])[0]) - plain._shift) / plain._scale
    with torch.no_grad():
        members = torch.stack([torch.softmax(m(x), dim=1) for m in plain._models]) * w
    members = members / members.sum(dim=2, keepdim=True)
    expected = members.mean(dim=0).t().reshape(g1.shape).numpy()
    np.testing.assert_allclose(g1, expected, atol=1e-5)
    assert float(g1[2].sum()) > float(g0[2].sum())
    with pytest.raises(ValueError, match="class_balance must be >= 0"):
        PixelClassifierMatcher(encoder, class_balance=-0.5)
