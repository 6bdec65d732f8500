"""Cohort discovery (jaxslu/fairness/cohorts.py) on hand-made evaluation records: the geographic
split search, k-means virtual regions, bootstrap intervals, the paired bootstrap, the method
summary, and the `jaxslu cohorts` command on a records file (no model needed)."""
import itertools
import json
import math

import numpy as np
import pytest

from jaxslu import cli
from jaxslu.fairness import cohorts as C
from jaxslu.text import metrics as M

WORDS = 10


def utt(spk, k, lat, lon, errors, accent=None):
    """One record of WORDS reference words with exactly `errors` substitutions."""
    meta = {} if lat is None else {"lat": lat, "lon": lon}
    if accent is not None:
        meta["accent"] = accent
    ref = " ".join(f"w{i}" for i in range(WORDS))
    hyp = " ".join("x" if i < errors else f"w{i}" for i in range(WORDS))
    rec = {"id": f"{spk}-{k:03d}", "speaker": spk, "meta": meta, "ref": ref, "hyp": hyp}
    if accent is not None:
        rec["accent"] = accent
    return rec


def speaker(spk, lat, lon, n, errors, accent=None):
    """n utterances of one speaker; `errors` an int (every utterance) or a list (cycled)."""
    errs = [errors] if isinstance(errors, int) else list(errors)
    return [utt(spk, k, lat, lon, errs[k % len(errs)], accent) for k in range(n)]


def two_bands(seed=0, n_per_band=6, utts=10):
    """South speakers (lat 40-44) at WER 10%, north speakers (lat 55-59) at WER 40%."""
    rng = np.random.default_rng(seed)
    recs = []
    for band, (lat0, errs) in enumerate(((40.0, 1), (55.0, 4))):
        for s in range(n_per_band):
            recs += speaker(f"b{band}s{s}", round(lat0 + rng.uniform(0, 4), 4),
                            round(rng.uniform(-10, 10), 4), utts, errs,
                            accent="south" if band == 0 else "north")
    return recs


def test_utterance_errors_sum_to_corpus_wer():
    recs = two_bands()
    recs[0] = {**recs[0], "hyp": recs[0]["hyp"] + " extra words"}
    e, w = C.utterance_errors(recs)
    corpus = M.wer([r["ref"] for r in recs], [r["hyp"] for r in recs])
    assert e.sum() == corpus.errors and w.sum() == corpus.ref_len
    with pytest.raises(ValueError, match="no 'ref'/'hyp'"):
        C.utterance_errors([{"id": "a", "speaker": "s"}])


def test_geo_first_split_separates_planted_bands():
    recs = two_bands()
    cohorts = C.geo_cohorts(recs, min_size=20, max_depth=1, n_boot=200)
    assert len(cohorts) == 2
    worst, best = cohorts
    assert {s[:2] for s in worst.speakers} == {"b1"} and {s[:2] for s in best.speakers} == {"b0"}
    assert worst.wer == pytest.approx(0.4) and best.wer == pytest.approx(0.1)
    step = worst.path[0]
    assert step["axis"] == "lat" and 44.0 < step["threshold"] < 55.0
    assert step["gap"] == pytest.approx(0.3)
    assert worst.name.startswith("lat>=") and best.name.startswith("lat<")
    assert worst.accents == {"north": 6}
    # deeper trees keep that first split, and every leaf holds >= min_size utterances
    for min_size in (10, 20, 30):
        deep = C.geo_cohorts(recs, min_size=min_size, max_depth=None, n_boot=50)
        assert all(c.utterances >= min_size for c in deep)
        assert all(c.path and c.path[0]["axis"] == "lat"
                   and 44.0 < c.path[0]["threshold"] < 55.0 for c in deep)
        assert sum(c.utterances for c in deep) == len(recs)
        assert sorted(s for c in deep for s in c.speakers) == sorted({r["speaker"] for r in recs})


def test_geo_pocket_below_min_size_is_not_split_off():
    recs = two_bands() + speaker("pocket", 70.0, 0.0, 3, 9)  # 3 utterances at WER 90%
    cohorts = C.geo_cohorts(recs, min_size=5, max_depth=None, n_boot=50)
    holder = next(c for c in cohorts if "pocket" in c.speakers)
    assert len(holder.speakers) > 1 and holder.utterances >= 5
    # the same pocket with min_size 3 is its own (worst) cohort: the test above is not vacuous
    small = C.geo_cohorts(recs, min_size=3, max_depth=None, n_boot=50)
    assert small[0].speakers == ["pocket"] and small[0].wer == pytest.approx(0.9)


def _brute_force_gap(recs, min_size):
    e, w = C.utterance_errors(recs)
    spk = {}
    for r, ei, wi in zip(recs, e, w):
        s = spk.setdefault(r["speaker"], [r["meta"]["lat"], r["meta"]["lon"], 0, 0, 0])
        s[2] += ei
        s[3] += wi
        s[4] += 1
    rows = list(spk.values())
    best = None
    for axis in (0, 1):
        values = sorted({r[axis] for r in rows})
        for a, b in zip(values, values[1:]):
            t = (a + b) / 2
            left = [r for r in rows if r[axis] < t]
            right = [r for r in rows if r[axis] >= t]
            lu, ru = sum(r[4] for r in left), sum(r[4] for r in right)
            if lu < min_size or ru < min_size:
                continue
            gap = abs(sum(r[2] for r in left) / sum(r[3] for r in left)
                      - sum(r[2] for r in right) / sum(r[3] for r in right))
            best = gap if best is None else max(best, gap)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_geo_split_maximizes_the_gap_brute_force(seed):
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(7):
        recs += speaker(f"s{s}", round(float(rng.uniform(30, 60)), 2),
                        round(float(rng.uniform(-20, 20)), 2), int(rng.integers(1, 6)),
                        [int(x) for x in rng.integers(0, WORDS + 1, size=3)])
    min_size = 4
    expected = _brute_force_gap(recs, min_size)
    cohorts = C.geo_cohorts(recs, min_size=min_size, max_depth=1, n_boot=20)
    if expected is None or expected == 0:
        assert len(cohorts) == 1 and cohorts[0].name == "all"
    else:
        assert len(cohorts) == 2
        assert cohorts[0].path[0]["gap"] == pytest.approx(expected, abs=1e-12)
        assert all(c.utterances >= min_size for c in cohorts)


def test_geo_leaves_partition_the_plane():
    rng = np.random.default_rng(3)
    recs = []
    for s in range(25):
        recs += speaker(f"s{s:02d}", round(float(rng.uniform(-60, 60)), 3),
                        round(float(rng.uniform(-150, 150)), 3), int(rng.integers(2, 8)),
                        [int(x) for x in rng.integers(0, 8, size=4)])
    cohorts = C.geo_cohorts(recs, min_size=8, max_depth=4, n_boot=20)
    assert len(cohorts) >= 4
    dicts = json.loads(json.dumps([c.as_dict() for c in cohorts]))  # as written to JSON
    thresholds = sorted({p["threshold"] for c in cohorts for p in c.path})
    lats = np.r_[rng.uniform(-90, 90, 300), thresholds, -1e9, 1e9, 0.0]
    lons = np.r_[rng.uniform(-180, 180, 300), thresholds, 1e9, -1e9, 0.0]
    pts = list(zip(lats, lons)) + list(itertools.product(thresholds, thresholds))
    for lat, lon in pts:
        inside = [i for i, c in enumerate(cohorts)
                  if c.bounds["lat"][0] <= lat < c.bounds["lat"][1]
                  and c.bounds["lon"][0] <= lon < c.bounds["lon"][1]]
        assert len(inside) == 1, (lat, lon, inside)
        assert C.assign_region(cohorts, lat, lon) == inside[0]
        assert C.assign_region(dicts, lat, lon) == inside[0]
    la, lo = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    assert (C.assign_region(cohorts, la, lo)
            == [C.assign_region(cohorts, a, b) for a, b in pts]).all()
    # every speaker's own home falls in its cohort
    home = {r["speaker"]: (r["meta"]["lat"], r["meta"]["lon"]) for r in recs}
    for i, c in enumerate(cohorts):
        assert all(C.assign_region(cohorts, *home[s]) == i for s in c.speakers)
    assert len({c.name for c in cohorts}) == len(cohorts)
    with pytest.raises(ValueError, match="finite"):
        C.assign_region(cohorts, math.nan, 0.0)
    with pytest.raises(ValueError, match="partition"):  # a leaf missing: a hole
        C.assign_region(cohorts[1:], *home[cohorts[0].speakers[0]])
    with pytest.raises(ValueError, match="partition"):  # a leaf twice: an overlap
        C.assign_region(cohorts[:1] + cohorts, *home[cohorts[0].speakers[0]])


def test_geo_degenerate_inputs_and_errors():
    one = speaker("solo", 50.0, 1.0, 5, 2)
    cohorts = C.geo_cohorts(one, min_size=1, n_boot=50)
    assert [c.name for c in cohorts] == ["all"] and cohorts[0].interval_unit == "utterance"
    assert C.assign_region(cohorts, -89.0, 179.0) == 0
    same_place = speaker("a", 50.0, 1.0, 5, 1) + speaker("b", 50.0, 1.0, 5, 5)
    assert len(C.geo_cohorts(same_place, min_size=1, n_boot=10)) == 1
    equal = speaker("a", 40.0, 1.0, 5, 2) + speaker("b", 50.0, 1.0, 5, 2)
    assert len(C.geo_cohorts(equal, min_size=1, n_boot=10)) == 1  # a zero gap is not a split

    bad = two_bands()
    bad[7] = {**bad[7], "meta": {"accent": "south"}}
    with pytest.raises(ValueError, match=f"{bad[7]['id']}.*lat.*--method embedding"):
        C.geo_cohorts(bad, min_size=5)
    bad[7] = {**bad[7], "meta": {"lat": "nowhere", "lon": 1.0}}
    with pytest.raises(ValueError, match=bad[7]["id"]):
        C.geo_cohorts(bad, min_size=5)
    moved = two_bands()
    moved[1] = {**moved[1], "meta": {"lat": 0.0, "lon": 0.0}}
    with pytest.raises(ValueError, match="two homes"):
        C.geo_cohorts(moved, min_size=5)
    with pytest.raises(ValueError, match="no speaker"):
        C.geo_cohorts([{**one[0], "speaker": None}], min_size=1)
    with pytest.raises(ValueError, match="min_size"):
        C.geo_cohorts(one, min_size=0)
    with pytest.raises(ValueError, match="no records"):
        C.geo_cohorts([], min_size=1)


def test_geo_ties_are_deterministic_and_order_free():
    # a checkerboard of WERs: several splits tie on the gap; the choice must not depend on
    # the order of the records
    recs = (speaker("sw", 40.0, -5.0, 10, 1) + speaker("se", 40.0, 5.0, 10, 4)
            + speaker("nw", 50.0, -5.0, 10, 4) + speaker("ne", 50.0, 5.0, 10, 1)
            + speaker("nn", 60.0, 0.0, 10, 4) + speaker("ee", 45.0, 15.0, 10, 1))
    a = C.geo_cohorts(recs, min_size=10, max_depth=2, n_boot=50, seed=1)
    b = C.geo_cohorts(list(reversed(recs)), min_size=10, max_depth=2, n_boot=50, seed=1)
    assert [c.as_dict() for c in a] == [c.as_dict() for c in b]


def blobs(seed=0, per=8, dim=8, centers=3):
    rng = np.random.default_rng(seed)
    means = np.eye(dim)[:centers] * 5.0 + 0.5
    vectors, truth, recs = {}, {}, []
    for j in range(centers):
        for s in range(per):
            name = f"c{j}s{s}"
            vectors[name] = means[j] + 0.05 * rng.normal(size=dim)
            truth[name] = j
            recs += speaker(name, None, None, 4, j + 1, accent=f"acc{j}")
    return vectors, truth, recs


def test_kmeans_recovers_planted_blobs_deterministically():
    vectors, truth, recs = blobs()
    cohorts = C.embedding_cohorts(vectors, recs, k=3, seed=0, n_boot=100)
    label = {s: i for i, c in enumerate(cohorts) for s in c.speakers}
    names = sorted(truth)
    assert C.adjusted_rand_index([label[s] for s in names], [truth[s] for s in names]) == 1.0
    assert [c.wer for c in cohorts] == pytest.approx([0.3, 0.2, 0.1])  # ranked worst first
    assert {c.name for c in cohorts} == {"virtual-1", "virtual-2", "virtual-3"}
    again = C.embedding_cohorts(vectors, recs, k=3, seed=0, n_boot=100)
    assert [c.as_dict() for c in again] == [c.as_dict() for c in cohorts]
    shuffled = dict(reversed(list(vectors.items())))
    other_order = C.embedding_cohorts(shuffled, list(reversed(recs)), k=3, seed=0, n_boot=100)
    assert [c.as_dict() for c in other_order] == [c.as_dict() for c in cohorts]
    # assign_nearest places every speaker (and a rescaled copy of it) in its own cohort
    for i, c in enumerate(cohorts):
        for s in c.speakers:
            assert C.assign_nearest(cohorts, vectors[s]) == i
            assert C.assign_nearest([x.as_dict() for x in cohorts], 3.0 * vectors[s]) == i
    stacked = np.stack([vectors[s] for s in names])
    assert (C.assign_nearest(np.stack([c.centroid for c in cohorts]), stacked)
            == [label[s] for s in names]).all()


def test_kmeans_function_and_ari():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(20, 2)) * 0.1 + c for c in ((0, 0), (5, 5), (-5, 5))])
    labels, centers, inertia = C.kmeans(X, 3, seed=4, n_init=3)
    assert C.adjusted_rand_index(labels, np.repeat([0, 1, 2], 20)) == 1.0
    assert labels[0] == 0  # canonical order: clusters numbered by first member
    l2, c2, i2 = C.kmeans(X, 3, seed=4, n_init=3)
    assert (labels == l2).all() and np.array_equal(centers, c2) and inertia == i2
    dup = np.zeros((5, 3))
    assert len(set(C.kmeans(dup, 2, seed=0)[0])) <= 2  # duplicates: no crash
    with pytest.raises(ValueError, match="k must"):
        C.kmeans(X, 0)
    assert C.adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    try:
        from sklearn.metrics import adjusted_rand_score
    except ImportError:
        return
    a, b = rng.integers(0, 3, 50), rng.integers(0, 4, 50)
    assert C.adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))


def test_embedding_report_without_coordinates_maps_principal_components(tmp_path):
    vectors, _, recs = blobs()
    _write_predictions(tmp_path, recs, split="dev")
    entry = C.cohorts_report(tmp_path, "dev", "embedding", k=3, embeddings=vectors, n_boot=50)
    assert entry["params"]["embeddings"] == "given" and entry["accent_ari"] == 1.0
    for key in ("map", "wer", "json"):
        assert (tmp_path / entry["files"][key]).is_file()
    assert entry["plots"]["map"] == "cohorts_dev_embedding_map.png"
    with pytest.raises(ValueError, match="unknown cohort method"):
        C.cohorts_report(tmp_path, "dev", "accent")


def test_embedding_cohort_errors():
    vectors, _, recs = blobs()
    with pytest.raises(ValueError, match="no vector"):
        C.embedding_cohorts({k: v for k, v in vectors.items() if k != "c0s0"}, recs, k=3)
    with pytest.raises(ValueError, match="k=99"):
        C.embedding_cohorts(vectors, recs, k=99)
    with pytest.raises(ValueError, match="zero or not finite"):
        C.embedding_cohorts({**vectors, "c0s0": np.zeros(8)}, recs, k=3)
    with pytest.raises(ValueError, match="different lengths"):
        C.embedding_cohorts({**vectors, "c0s0": np.ones(3)}, recs, k=3)


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)

    def cohort(n_speakers):
        words = rng.integers(20, 60, n_speakers)
        errors = rng.binomial(words, rng.uniform(0.1, 0.3, n_speakers))
        return errors, words

    widths = []
    for n in (8, 200):
        e, w = cohort(n)
        lo, hi = C.bootstrap_interval(e, w, n=1000, seed=0)
        assert lo <= e.sum() / w.sum() <= hi
        widths.append(hi - lo)
        assert C.bootstrap_interval(e, w, n=1000, seed=0) == (lo, hi)  # seeded
    assert widths[1] < widths[0] / 2
    assert all(math.isnan(x) for x in C.bootstrap_interval([], [], n=10))
    # in a cohort, the interval is around its WER; single speakers resample utterances
    cohorts = C.geo_cohorts(two_bands(), min_size=20, max_depth=1)
    for c in cohorts:
        assert c.interval[0] <= c.wer <= c.interval[1] and c.interval_unit == "speaker"


def test_paired_bootstrap():
    a = two_bands()
    same = C.paired_bootstrap(a, [dict(r) for r in reversed(a)], n=500)
    assert same["delta"] == 0.0 and same["interval"] == [0.0, 0.0]
    assert same["p_delta_ge_0"] == 1.0 and same["utterances"] == len(a) and same["speakers"] == 12
    worse = [{**r, "hyp": "x " + r["hyp"]} for r in a]  # one insertion more per utterance
    r = C.paired_bootstrap(a, worse, n=500)
    assert r["delta"] == pytest.approx(0.1) and r["interval"][0] > 0 and r["p_delta_ge_0"] == 1.0
    back = C.paired_bootstrap(worse, a, n=500, unit="utterance")
    assert back["delta"] == pytest.approx(-0.1) and back["p_delta_ge_0"] == 0.0
    noisy = [{**r, "hyp": "x " + r["hyp"]} if k % 3 == 0 else r for k, r in enumerate(a)]
    p = C.paired_bootstrap(a, noisy, n=500)
    assert p["interval"][0] <= p["delta"] <= p["interval"][1]
    with pytest.raises(ValueError, match="same utterances"):
        C.paired_bootstrap(a, a[1:])
    with pytest.raises(ValueError, match="different references"):
        C.paired_bootstrap(a, [{**a[0], "ref": "other"}] + a[1:])
    with pytest.raises(ValueError, match="twice"):
        C.paired_bootstrap(a + a[:1], a)
    anonymous = [{**r, "speaker": None} for r in a]
    with pytest.raises(ValueError, match="unit='utterance'"):
        C.paired_bootstrap(anonymous, anonymous)
    assert C.paired_bootstrap(anonymous, anonymous, unit="utterance", n=50)["delta"] == 0.0


def test_relative_gap_and_bottom_share_hand_computed():
    recs = (speaker("n1", 60.0, 0.0, 15, 4) + speaker("n2", 61.0, 1.0, 15, 4)
            + speaker("s1", 40.0, 0.0, 35, 1) + speaker("s2", 41.0, 1.0, 35, 1))
    cohorts = C.geo_cohorts(recs, min_size=20, max_depth=3, n_boot=50)
    assert [c.utterances for c in cohorts] == [30, 70]
    summary = C.summarize_cohorts(cohorts)
    assert summary["relative_gap"] == pytest.approx((0.4 - 0.1) / 0.1)
    assert summary["bottom_share"] == pytest.approx(0.3)
    assert summary["worst"] == cohorts[0].name
    perfect = speaker("a", 40.0, 0.0, 5, 0) + speaker("b", 50.0, 0.0, 5, 2)
    assert C.summarize_cohorts(C.geo_cohorts(perfect, 5, n_boot=10))["relative_gap"] is None
    flat = C.geo_cohorts(speaker("a", 40.0, 0.0, 5, 0), 1, n_boot=10)
    assert C.summarize_cohorts(flat)["relative_gap"] == 0.0


def _write_predictions(workdir, recs, split="test"):
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f"predictions_{split}.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def test_cli_cohorts_on_a_records_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXSLU_COMPILATION_CACHE", "0")
    vectors, _, blob_recs = blobs()
    rng = np.random.default_rng(0)
    homes = {s: (round(float(rng.uniform(35, 60)), 3), round(float(rng.uniform(-10, 10)), 3))
             for s in vectors}
    recs = [{**r, "meta": {**r["meta"], "lat": homes[r["speaker"]][0],
                           "lon": homes[r["speaker"]][1]}} for r in blob_recs]
    work, out = tmp_path / "run", tmp_path / "results"
    _write_predictions(work, recs)
    np.savez(tmp_path / "spk.npz", speakers=np.array(sorted(vectors)),
             vectors=np.stack([vectors[s] for s in sorted(vectors)]))
    assert cli.main(["cohorts", "--workdir", str(work), "--method", "geo", "--min-size", "12",
                     "--out", str(out), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "relative gap" in printed and str(out / "cohorts.json") in printed
    assert cli.main(["cohorts", "--workdir", str(work), "--method", "embedding", "--k", "3",
                     "--embeddings", str(tmp_path / "spk.npz"), "--out", str(out),
                     "--bootstrap", "200"]) == 0
    doc = json.loads((out / "cohorts.json").read_text())
    assert [m["method"] for m in doc["methods"]] == ["geo", "embedding"]
    for m in doc["methods"]:
        assert {"method", "cohorts", "relative_gap", "bottom_share"} <= set(m)
        assert m["provenance"]["command"].startswith("jaxslu cohorts")
        for c in m["cohorts"]:
            assert {"name", "speakers", "utterances", "wer", "interval"} <= set(c)
        assert sum(c["utterances"] for c in m["cohorts"]) == len(recs)
        for name in m["plots"].values():
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (work / name).is_file()
        per_run = json.loads((work / f"cohorts_test_{m['method']}.json").read_text())
        assert per_run["cohorts"] == m["cohorts"]
    geo, emb = doc["methods"]
    assert geo["params"]["min_size"] == 12 and all(c["utterances"] >= 12 for c in geo["cohorts"])
    assert all("bounds" in c for c in geo["cohorts"]) and geo["splits"]
    assert emb["params"]["k"] == 3 and emb["accent_ari"] == 1.0
    assert len(emb["cohorts"][0]["centroid"]) == 8
    # running a method again replaces its entry
    assert cli.main(["cohorts", "--workdir", str(work), "--method", "geo", "--out", str(out),
                     "--bootstrap", "50"]) == 0
    doc = json.loads((out / "cohorts.json").read_text())
    assert [m["method"] for m in doc["methods"]] == ["geo", "embedding"]
    assert doc["methods"][0]["params"]["n_boot"] == 50


def test_cli_cohorts_bad_input_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXSLU_COMPILATION_CACHE", "0")
    work = tmp_path / "run"
    work.mkdir()
    assert cli.main(["cohorts", "--workdir", str(work), "--method", "geo"]) == 2
    err = capsys.readouterr().err
    assert f"jaxslu eval --workdir {work} --split test" in err
    _write_predictions(work, [{k: v for k, v in r.items() if k != "meta"}
                              for r in two_bands()])
    assert cli.main(["cohorts", "--workdir", str(work), "--method", "geo"]) == 2
    assert "--method embedding" in capsys.readouterr().err
    # no trained run to take encoder states from, no --embeddings
    assert cli.main(["cohorts", "--workdir", str(work), "--method", "embedding"]) == 2
    assert "--embeddings" in capsys.readouterr().err
