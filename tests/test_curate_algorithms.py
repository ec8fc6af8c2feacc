"""alignjax.curate: caption/image rules, CLIP-score selection, near-duplicates, k-means, subsets.

Everything runs on generated numpy data (tiny arrays, no network). The near-duplicate
tests plant families of copies (a base vector and 1-3 noisy copies at cosine > 0.97) among
unrelated vectors, so the true duplicate pairs are known.
"""

import numpy as np
import pytest

from alignjax.curate import clusters, dedup, filters, rules


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# rules
# ----------------------------------------------------------------------------------------
def test_caption_words_strip_punctuation_and_case():
    assert rules.caption_words('  A dog, a DOG!  ... ') == ['a', 'dog', 'a', 'dog']
    assert rules.caption_words(None) == []
    assert rules.top_token_fraction(['a', 'dog', 'a', 'dog', 'x']) == pytest.approx(0.4)
    assert rules.longest_run(['sale', 'sale', 'now', 'sale', 'sale', 'sale']) == 3
    assert rules.longest_run([]) == 0


def test_default_rules_keep_everything():
    r = rules.Rules()
    for caption, size in [('', (1, 1)), (None, None), ('x ' * 500, (10000, 1))]:
        assert r.reason(caption, size) is None


def test_rule_caption_empty():
    r = rules.Rules(drop_empty=True)
    for caption in ['', '   \n\t', None, ' ... !! ']:
        assert r.reason(caption) == 'caption_empty'
    assert r.reason('a cat') is None


def test_rule_caption_too_short():
    r = rules.Rules(min_words=3)
    assert r.reason('a cat') == 'caption_too_short'
    assert r.reason('') == 'caption_too_short'  # empty is short when only min_words is set
    assert r.reason('a black cat') is None


def test_rule_caption_too_long():
    r = rules.Rules(max_words=4)
    assert r.reason('one two three four five') == 'caption_too_long'
    assert r.reason('one two three four') is None


def test_rule_caption_repetitive_fraction():
    r = rules.Rules(max_top_fraction=0.5, repeat_min_words=4)
    assert r.reason('buy buy buy cheap shoes') == 'caption_repetitive'  # 3 / 5 > 0.5
    assert r.reason('a dog and a cat') is None  # 2 / 5
    assert r.reason('dog dog dog') is None  # shorter than repeat_min_words: not judged


def test_rule_caption_repetitive_run():
    r = rules.Rules(max_run=3)
    assert r.reason('the best best best photo') == 'caption_repetitive'
    assert r.reason('the best best photo best') is None


def test_rule_image_too_small():
    r = rules.Rules(min_side=64)
    assert r.reason('x', (63, 500)) == 'image_too_small'
    assert r.reason('x', (64, 64)) is None


def test_rule_image_aspect():
    r = rules.Rules(max_aspect=3.0)
    assert r.reason('x', (301, 100)) == 'image_aspect'
    assert r.reason('x', (100, 301)) == 'image_aspect'
    assert r.reason('x', (300, 100)) is None


def test_reason_is_the_first_failing_rule_in_order():
    r = rules.Rules(
        drop_empty=True, min_words=2, max_words=6, max_run=2, min_side=32, max_aspect=2.0
    )
    bad_image = (10, 100)  # too small and too elongated
    assert r.reason('', bad_image) == 'caption_empty'
    assert r.reason('cat', bad_image) == 'caption_too_short'
    assert r.reason('a b c d e f g g', bad_image) == 'caption_too_long'
    assert r.reason('a cat cat', bad_image) == 'caption_repetitive'
    assert r.reason('a cat', bad_image) == 'image_too_small'
    assert r.reason('a cat', (100, 300)) == 'image_aspect'
    assert r.reason('a cat', (100, 150)) is None
    assert rules.REASONS == (
        'caption_empty',
        'caption_too_short',
        'caption_too_long',
        'caption_repetitive',
        'image_too_small',
        'image_aspect',
    )


def test_count_reasons():
    r = rules.Rules(drop_empty=True, min_side=32)
    stream = [('', (64, 64)), ('a cat', (8, 64)), ('a dog', (64, 64)), ('x', (40, 40))]
    counts = rules.count_reasons(r, iter(stream))
    assert counts == {
        'caption_empty': 1,
        'caption_too_short': 0,
        'caption_too_long': 0,
        'caption_repetitive': 0,
        'image_too_small': 1,
        'image_aspect': 0,
        'kept': 2,
    }


def test_rules_bad_values_raise():
    with pytest.raises(ValueError, match='min_words=5 > max_words=3'):
        rules.Rules(min_words=5, max_words=3)
    with pytest.raises(ValueError, match='max_run'):
        rules.Rules(max_run=1)
    with pytest.raises(ValueError, match='max_top_fraction'):
        rules.Rules(max_top_fraction=1.0)
    with pytest.raises(ValueError, match='max_aspect'):
        rules.Rules(max_aspect=0.5)
    with pytest.raises(ValueError, match='need the image size'):
        rules.Rules(min_side=8).reason('a cat', None)
    with pytest.raises(ValueError, match='side <= 0'):
        rules.Rules(min_side=8).reason('a cat', (0, 10))


# ----------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------
def test_rowwise_cosine_normalises():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 8)), rng.standard_normal((5, 8))
    want = np.sum(_unit(x) * _unit(y), axis=1)
    np.testing.assert_allclose(filters.rowwise_cosine(3 * x, y), want, atol=1e-6)
    with pytest.raises(ValueError, match='zero embedding'):
        filters.rowwise_cosine(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match='differ'):
        filters.rowwise_cosine(x, y[:4])


def test_select_by_threshold():
    s = np.array([0.3, 0.1, 0.3, 0.25])
    np.testing.assert_array_equal(filters.select_by_score(s, threshold=0.25), [1, 0, 1, 1])


def test_select_by_fraction_with_ties():
    s = np.array([0.2, 0.5, 0.5, 0.5, 0.1, 0.5])
    # K = round-half-up(0.5 * 6) = 3 of the four tied 0.5s: the lowest indices win.
    np.testing.assert_array_equal(filters.select_by_score(s, keep_fraction=0.5), [0, 1, 1, 1, 0, 0])
    assert filters.select_by_score(s, keep_fraction=1e-9).sum() == 1  # at least one
    assert filters.select_by_score(s, keep_fraction=1.0).all()
    assert filters.target_count(5, 0.5) == 3  # 2.5 rounds up


def test_select_bad_input():
    with pytest.raises(ValueError, match='exactly one'):
        filters.select_by_score([0.1], threshold=0.1, keep_fraction=0.5)
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        filters.select_by_score([0.1], keep_fraction=0.0)
    with pytest.raises(ValueError, match='NaN'):
        filters.select_by_score([0.1, np.nan], threshold=0.0)


# ----------------------------------------------------------------------------------------
# dedup
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def planted():
    """305 vectors in D = 64: 200 unrelated bases, 50 of them with 1-3 noisy copies, shuffled.

    Returns (embeddings [N, D], family [N]: the base each row derives from, true pairs).
    """
    rng = np.random.default_rng(0)
    d = 64
    base = _unit(rng.standard_normal((200, d)))
    rows, family = [base], list(range(200))
    for b in range(50):
        for _ in range(rng.integers(1, 4)):
            rows.append(_unit((base[b] + 0.015 * rng.standard_normal(d))[None]))
            family.append(b)
    x = np.concatenate(rows)
    perm = rng.permutation(x.shape[0])
    x, family = x[perm], np.asarray(family)[perm]
    sims = x @ x.T
    same = family[:, None] == family[None, :]
    off = ~np.eye(x.shape[0], dtype=bool)
    assert sims[same & off].min() > 0.97 and sims[~same].max() < 0.7  # as planted
    truth = {(i, j) for i, j in zip(*np.nonzero(np.triu(same, 1)))}
    return x, family, truth


def _pair_set(result):
    return {(int(i), int(j)) for i, j in result.pairs}


def test_exact_finds_planted_duplicates(planted):
    x, family, truth = planted
    res = dedup.exact_duplicates(x, threshold=0.95, chunk_size=64)
    assert _pair_set(res) == truth  # recall 1.0 and precision 1.0
    assert res.num_groups == 50 and res.num_kept == 200
    # Each family is one group, represented by its lowest index.
    for f in np.unique(family):
        members = np.flatnonzero(family == f)
        assert (res.group[members] == members.min()).all()
    assert (res.similarities >= 0.95).all()


def test_exact_is_independent_of_chunk_size(planted):
    x, _, _ = planted
    ref = dedup.exact_duplicates(x, chunk_size=1024)
    for chunk in (7, 64, 305):
        res = dedup.exact_duplicates(x, chunk_size=chunk)
        np.testing.assert_array_equal(res.pairs, ref.pairs)
        np.testing.assert_array_equal(res.group, ref.group)
        np.testing.assert_array_equal(res.keep, ref.keep)


def test_exact_capacity_grows_when_a_chunk_holds_many_pairs():
    # 1100 copies of one vector: 604,450 pairs from the first chunk alone (> the first capacity).
    x = np.tile(_unit(np.ones((1, 4))), (1100, 1))
    res = dedup.exact_duplicates(x, chunk_size=1024)
    assert res.num_pairs == 1100 * 1099 // 2
    assert res.num_kept == 1 and (res.group == 0).all()


def test_permutation_gives_the_same_groups(planted):
    x, _, _ = planted
    ref = dedup.exact_duplicates(x)
    perm = np.random.default_rng(1).permutation(x.shape[0])
    res = dedup.exact_duplicates(x[perm])
    # Same partition: rows perm[a], perm[b] share a group iff rows a, b of x[perm] do.
    np.testing.assert_array_equal(
        ref.group[perm][:, None] == ref.group[perm][None, :],
        res.group[:, None] == res.group[None, :],
    )
    # With lowest-index representatives, the new representative is the group's lowest
    # position in the permuted order.
    for g in np.unique(res.group):
        assert g == np.flatnonzero(res.group == g).min()


def test_scores_choose_the_representative(planted):
    x, family, _ = planted
    scores = np.random.default_rng(2).random(x.shape[0])
    res = dedup.exact_duplicates(x, scores=scores)
    for f in np.unique(family):
        members = np.flatnonzero(family == f)
        assert (res.group[members] == members[np.argmax(scores[members])]).all()
    # Ties go to the lower index.
    tied = dedup.groups_from_pairs(4, [[0, 3], [1, 3]], scores=[0.1, 0.9, 0.2, 0.9])
    np.testing.assert_array_equal(tied, [1, 1, 2, 1])


def test_groups_are_connected_components():
    # A chain 4 - 2 - 0 is one group even without the pair (0, 4).
    group = dedup.groups_from_pairs(7, [[2, 4], [0, 2], [5, 6], [3, 5]])
    np.testing.assert_array_equal(group, [0, 1, 0, 3, 0, 3, 3])
    np.testing.assert_array_equal(dedup.groups_from_pairs(3, np.zeros((0, 2))), [0, 1, 2])


def test_lsh_recall_against_exact(planted):
    x, _, _ = planted
    exact = dedup.exact_duplicates(x, threshold=0.95)
    lsh = dedup.lsh_duplicates(x, threshold=0.95)  # defaults: 16 tables x 16 bits, seed 0
    agree = dedup.compare(exact, lsh)
    print(
        f'\nLSH (16 tables x 16 bits) vs exact, {x.shape[0]} x {x.shape[1]}, t = 0.95: '
        f'pair recall {agree.pair_recall:.3f} ({agree.common_pairs}/{agree.reference_pairs}), '
        f'pair precision {agree.pair_precision:.3f}, group recall {agree.group_recall:.3f}, '
        f'group precision {agree.group_precision:.3f}, keep agreement '
        f'{agree.keep_agreement:.3f}; {lsh.num_candidates} candidates checked of '
        f'{exact.num_candidates}'
    )
    assert agree.pair_recall >= 0.9
    assert agree.pair_precision == 1.0 and agree.group_precision == 1.0
    assert lsh.num_candidates < exact.num_candidates / 50  # it prunes
    # Deterministic for a seed.
    again = dedup.lsh_duplicates(x, threshold=0.95)
    np.testing.assert_array_equal(again.pairs, lsh.pairs)
    np.testing.assert_array_equal(again.group, lsh.group)


def test_lsh_big_buckets_are_checked_exactly(planted):
    x, _, _ = planted
    # 4 bits: ~19 members per bucket. A bucket over max_bucket is checked as a dense block,
    # which must find exactly the pairs that listing its members' pairs finds.
    listed = dedup.lsh_duplicates(x, num_tables=3, bits=4, max_bucket=10**6)
    dense = dedup.lsh_duplicates(x, num_tables=3, bits=4, max_bucket=2)
    np.testing.assert_array_equal(dense.pairs, listed.pairs)
    np.testing.assert_array_equal(dense.group, listed.group)
    np.testing.assert_allclose(dense.similarities, listed.similarities, atol=1e-5)


def test_lsh_pair_probability():
    assert dedup.lsh_pair_probability(0.95, 16, 16) == pytest.approx(0.96, abs=0.005)
    assert dedup.lsh_pair_probability(0.97, 16, 16) == pytest.approx(0.994, abs=0.002)
    assert dedup.lsh_pair_probability(1.0, 16, 16) == 1.0
    assert dedup.lsh_pair_probability(0.0, 16, 1) == pytest.approx(2.0**-16)


def test_compare_counts_pairs_and_groups():
    def result(n, pairs):
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        group = dedup.groups_from_pairs(n, pairs)
        sims = np.ones(pairs.shape[0], np.float32)
        return dedup.DedupResult(group == np.arange(n), group, pairs, sims, 0, 0.9)

    ref = result(5, [[0, 1], [1, 2], [0, 2], [3, 4]])
    cand = result(5, [[0, 1], [1, 2]])  # misses (0, 2) (still grouped) and (3, 4)
    agree = dedup.compare(ref, cand)
    assert agree.pair_recall == pytest.approx(0.5) and agree.pair_precision == 1.0
    assert agree.group_recall == pytest.approx(3 / 4) and agree.group_precision == 1.0
    assert agree.keep_agreement == pytest.approx(4 / 5)


def test_dedup_bad_input():
    with pytest.raises(ValueError, match='2-D'):
        dedup.exact_duplicates(np.ones(4))
    with pytest.raises(ValueError, match='unit norm'):
        dedup.exact_duplicates(np.ones((3, 4)))
    with pytest.raises(ValueError, match='threshold'):
        dedup.lsh_duplicates(_unit(np.ones((3, 4))), threshold=0.0)
    with pytest.raises(ValueError, match='bits'):
        dedup.lsh_duplicates(_unit(np.ones((3, 4))), bits=40)


# ----------------------------------------------------------------------------------------
# clusters
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def blobs():
    """300 unit vectors in D = 32 around 6 well-separated centres; (x, true label)."""
    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((6, 32)))
    label = rng.permutation(np.arange(300) % 6)
    return _unit(centres[label] + 0.05 * rng.standard_normal((300, 32))), label


def test_kmeans_recovers_planted_clusters(blobs):
    x, label = blobs
    res = clusters.kmeans(x, 6, seed=0, chunk_size=64)
    assert res.converged
    # Purity 1.0 both ways: each true cluster is exactly one found cluster.
    cells = set(zip(label.tolist(), res.assignments.tolist()))
    assert len(cells) == 6
    assert len({a for _, a in cells}) == 6
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed(blobs):
    x, _ = blobs
    rng = np.random.default_rng(4)
    noise = _unit(rng.standard_normal((200, 16)))  # no structure: the init matters
    for data, k in ((x, 6), (noise, 7)):
        a = clusters.kmeans(data, k, seed=5)
        b = clusters.kmeans(data, k, seed=5)
        np.testing.assert_array_equal(a.assignments, b.assignments)
        np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(
        clusters.kmeans_plus_plus(noise, 7, seed=5), clusters.kmeans_plus_plus(noise, 7, seed=5)
    )


def test_kmeans_chunked_equals_unchunked():
    x = _unit(np.random.default_rng(6).standard_normal((250, 16)))
    whole = clusters.kmeans(x, 8, seed=1, chunk_size=4096)
    for chunk in (32, 100):
        part = clusters.kmeans(x, 8, seed=1, chunk_size=chunk)
        np.testing.assert_array_equal(part.assignments, whole.assignments)
        np.testing.assert_allclose(part.centroids, whole.centroids, atol=1e-5)
        assert part.iterations == whole.iterations
        assert part.inertia == pytest.approx(whole.inertia, rel=1e-5)


def test_kmeans_assignments_match_centroids():
    x = _unit(np.random.default_rng(7).standard_normal((120, 8)))
    res = clusters.kmeans(x, 5, seed=0, max_iter=2)  # stopped early: still consistent
    np.testing.assert_array_equal(res.assignments, np.argmax(x @ res.centroids.T, axis=1))


def test_kmeans_plus_plus_spreads_over_planted_clusters(blobs):
    x, label = blobs
    init = clusters.kmeans_plus_plus(x, 6, seed=0)
    nearest = np.argmax(init @ x.T, axis=1)
    assert len(set(label[nearest].tolist())) == 6


def test_kmeans_bad_input(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match='k=400 > 300 samples'):
        clusters.kmeans(x, 400)
    with pytest.raises(ValueError, match='unit norm'):
        clusters.kmeans(2 * x, 3)


def test_cluster_quotas_water_fill():
    # K = 43 over sizes [5, 20, 100, 300]: the 5 are all taken, 38 left: 12 each and the
    # 2 left over to the two largest clusters.
    np.testing.assert_array_equal(clusters.cluster_quotas([5, 20, 100, 300], 43), [5, 12, 13, 13])
    np.testing.assert_array_equal(clusters.cluster_quotas([3, 10, 50, 7], 40), [3, 10, 20, 7])
    np.testing.assert_array_equal(clusters.cluster_quotas([4, 4], 8), [4, 4])


def test_balanced_subset_size_balance_determinism():
    sizes = [5, 20, 100, 300]
    assign = np.random.default_rng(8).permutation(np.repeat([10, 3, 7, 1], sizes))
    n = assign.size
    for fraction in (0.01, 0.1, 0.25, 0.333, 0.5, 1.0):
        keep = clusters.balanced_subset(assign, fraction, seed=0)
        assert keep.sum() == filters.target_count(n, fraction)
    keep = clusters.balanced_subset(assign, 0.1, seed=0)  # K = 43
    taken = {c: int(keep[assign == c].sum()) for c in (10, 3, 7, 1)}
    assert taken == {10: 5, 3: 12, 7: 13, 1: 13}
    np.testing.assert_array_equal(keep, clusters.balanced_subset(assign, 0.1, seed=0))
    assert not np.array_equal(keep, clusters.balanced_subset(assign, 0.1, seed=1))


def test_balanced_subset_prefers_high_scores():
    assign = np.repeat([0, 1, 2], [10, 10, 10])
    scores = np.random.default_rng(9).random(30)
    scores[3] = scores[4] = 2.0  # a tie: both within cluster 0's top 3
    keep = clusters.balanced_subset(assign, 0.3, seed=0, scores=scores)  # 3 per cluster
    for c in range(3):
        members = np.flatnonzero(assign == c)
        top = members[np.argsort(-scores[members], kind='stable')[:3]]
        assert set(np.flatnonzero(keep & (assign == c))) == set(top)
    # A tie at the cut goes to the lower index.
    tie = clusters.balanced_subset(np.zeros(3, int), 0.34, scores=[1.0, 1.0, 1.0])
    np.testing.assert_array_equal(tie, [1, 0, 0])


def test_balanced_subset_bad_input():
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        clusters.balanced_subset(np.zeros(4, int), 1.5)
    with pytest.raises(ValueError, match='1-D int'):
        clusters.balanced_subset(np.zeros(4), 0.5)
    with pytest.raises(ValueError, match='entries for 4 samples'):
        clusters.balanced_subset(np.zeros(4, int), 0.5, scores=[1.0])


def test_curate_imports_no_training_stack():
    # The package is a leaf layer: its modules only reach jax, numpy and each other.
    import ast
    import pathlib

    root = pathlib.Path(clusters.__file__).parent
    for name in ('__init__', 'rules', 'filters', 'dedup', 'clusters'):  # the algorithm layer
        path = root / f'{name}.py'
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for imported in names:
                if imported.startswith('alignjax'):
                    assert imported.startswith('alignjax.curate'), (path.name, imported)
