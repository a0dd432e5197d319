"""Retrieval metrics checked against a naive per-query loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.metrics import (
    dual_softmax,
    metrics_from_ranks,
    retrieval_metrics,
    text_to_video_ranks,
    video_to_text_ranks,
)


def oracle_text_to_video(similarity: np.ndarray, targets: np.ndarray) -> list[int]:
    ranks = []
    for query in range(similarity.shape[0]):
        own = similarity[query, targets[query]]
        rank = 1
        for video in range(similarity.shape[1]):
            if video != targets[query] and similarity[query, video] >= own:
                rank += 1
        ranks.append(rank)
    return ranks


def oracle_video_to_text(similarity: np.ndarray, targets: np.ndarray) -> list[int]:
    ranks = []
    for video in range(similarity.shape[1]):
        own_captions = [q for q in range(similarity.shape[0]) if targets[q] == video]
        if not own_captions:
            continue
        best = max(similarity[q, video] for q in own_captions)
        rank = 1
        for query in range(similarity.shape[0]):
            if targets[query] != video and similarity[query, video] >= best:
                rank += 1
        ranks.append(rank)
    return ranks


def oracle_summary(ranks: list[int]) -> dict[str, float]:
    ordered = sorted(ranks)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        median = float(ordered[middle])
    else:
        median = (ordered[middle - 1] + ordered[middle]) / 2
    return {
        "R@1": 100.0 * sum(r <= 1 for r in ranks) / len(ranks),
        "R@5": 100.0 * sum(r <= 5 for r in ranks) / len(ranks),
        "R@10": 100.0 * sum(r <= 10 for r in ranks) / len(ranks),
        "MdR": median,
        "MnR": sum(ranks) / len(ranks),
    }


def random_case(seed: int, num_videos: int, captions_per_video: int, levels: int | None):
    """Random [Q, V] matrix; ``levels`` quantises scores so that many ties occur."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(num_videos), captions_per_video)
    rng.shuffle(targets)
    similarity = rng.normal(size=(targets.size, num_videos))
    if levels is not None:
        similarity = np.round(similarity * levels / 3.0) / levels
    return similarity, targets


CASES = [
    # seed, videos, captions per video, quantisation levels (None: no ties)
    (0, 30, 1, None),
    (1, 25, 3, None),
    (2, 40, 1, 2),
    (3, 20, 5, 1),
    (4, 50, 2, 3),
]


@pytest.mark.parametrize("seed,num_videos,per_video,levels", CASES)
def test_text_to_video_matches_oracle(seed, num_videos, per_video, levels):
    similarity, targets = random_case(seed, num_videos, per_video, levels)

    ranks = text_to_video_ranks(similarity, targets)

    assert ranks.tolist() == oracle_text_to_video(similarity, targets)


@pytest.mark.parametrize("seed,num_videos,per_video,levels", CASES)
def test_video_to_text_matches_oracle(seed, num_videos, per_video, levels):
    similarity, targets = random_case(seed, num_videos, per_video, levels)

    ranks = video_to_text_ranks(similarity, targets)

    assert ranks.tolist() == oracle_video_to_text(similarity, targets)


@pytest.mark.parametrize("seed,num_videos,per_video,levels", CASES)
def test_summary_matches_oracle(seed, num_videos, per_video, levels):
    similarity, targets = random_case(seed, num_videos, per_video, levels)

    report = retrieval_metrics(similarity, targets).as_dict()

    for direction, oracle in (("t2v", oracle_text_to_video), ("v2t", oracle_video_to_text)):
        expected = oracle_summary(oracle(similarity, targets))
        for key, value in expected.items():
            assert report[direction][key] == pytest.approx(value), (direction, key)


def test_ties_counted_pessimistically():
    constant = np.zeros((4, 4))

    assert text_to_video_ranks(constant).tolist() == [4, 4, 4, 4]
    assert video_to_text_ranks(constant).tolist() == [4, 4, 4, 4]


def test_single_tie_ranks_competitor_ahead():
    similarity = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.0, 0.0, 0.0]])

    assert text_to_video_ranks(similarity).tolist() == [2, 1, 3]


def test_uncaptioned_video_skipped_in_video_to_text():
    similarity = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.5]])
    targets = np.array([0, 1])

    ranks = video_to_text_ranks(similarity, targets)

    assert ranks.tolist() == [1, 1]


def test_torch_input_accepted():
    similarity, targets = random_case(7, 10, 2, None)

    from_torch = retrieval_metrics(torch.from_numpy(similarity), torch.from_numpy(targets))
    from_numpy = retrieval_metrics(similarity, targets)

    assert from_torch == from_numpy


def test_dsl_reported_separately():
    similarity, targets = random_case(5, 20, 2, None)

    plain = retrieval_metrics(similarity, targets)
    with_dsl = retrieval_metrics(similarity, targets, dsl=True)

    assert plain.text_to_video_dsl is None
    assert with_dsl.text_to_video == plain.text_to_video
    assert with_dsl.video_to_text == plain.video_to_text
    expected_t2v = text_to_video_ranks(dual_softmax(similarity), targets)
    expected_v2t = video_to_text_ranks(dual_softmax(similarity.T).T, targets)
    assert with_dsl.text_to_video_dsl == metrics_from_ranks(expected_t2v)
    assert with_dsl.video_to_text_dsl == metrics_from_ranks(expected_v2t)


def test_dual_softmax_matches_torch_formula():
    similarity, _ = random_case(6, 12, 1, None)
    tensor = torch.from_numpy(similarity)

    expected = (tensor * torch.softmax(tensor * 100, dim=0)).numpy()

    np.testing.assert_allclose(dual_softmax(similarity), expected, rtol=1e-9, atol=1e-12)


def test_invalid_targets_rejected():
    similarity = np.zeros((3, 2))

    with pytest.raises(ValueError, match="targets are required"):
        retrieval_metrics(similarity)
    with pytest.raises(ValueError, match=r"video indices in \[0, 2\)"):
        retrieval_metrics(similarity, [0, 1, 2])
    with pytest.raises(ValueError, match="one video index per query"):
        retrieval_metrics(similarity, [0, 1])
