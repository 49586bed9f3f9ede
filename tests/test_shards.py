"""Sharded test prediction (06 shard i of N) and the merge into one submission.

Real prediction on a small synthetic test set with a tiny network: three shards predicted apart
then merged must equal the unsharded submission byte for byte (after decompression); a missing,
interrupted or torn shard makes the merge fail naming it; the ranges cover every id once.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _tiny_run import tiny_checkpoint

from kaggle_utils import inference as I
from kaggle_utils import predict as P
from kaggle_utils import shards as S
from kaggle_utils import testset as T
from kaggle_utils.layout import find_data
from kaggle_utils.submission import SubmissionError

N = 3


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", size=(64, 96))
    return I.load_members([ckpt])


@pytest.fixture(scope="module")
def data(small_synthetic):
    return find_data(small_synthetic)


def _predict(members, data, out: Path, **kw):
    # batch_size=1: each image's forward is the same computation sharded or not
    return P.predict_submission(
        members, data, out, batch_size=1, num_workers=0, chunk_size=4, progress=False, **kw
    )


@pytest.fixture(scope="module")
def runs(members, data, tmp_path_factory):
    """(whole-set submission, run folder with N predicted shards)."""
    whole = tmp_path_factory.mktemp("whole") / "submission.csv.gz"
    _predict(members, data, whole)
    run = tmp_path_factory.mktemp("sharded")
    for i in range(N):
        result = _predict(members, data, run / "submission.csv.gz", shard=i, n_shards=N)
        assert result.path == S.shard_path(run / "submission.csv.gz", i, N)
    return whole, run


def _copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_shard_ranges_cover_every_id_once():
    for n_ids in (1, 7, 16, 100, 100_064):
        for n in range(1, min(n_ids, 9) + 1):
            ranges = [T.shard_range(n_ids, i, n) for i in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n_ids
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            sizes = {stop - start for start, stop in ranges}
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    ids = [f"c_{k:02d}.jpg" for k in range(10)]
    got = [i for s in range(N) for i in T.select_shard(ids, s, N)]
    assert got == ids
    assert T.select_shard(ids, None, None) == ids
    with pytest.raises(ValueError, match="outside 0..2"):
        T.shard_range(10, 3, 3)
    with pytest.raises(ValueError, match="give both"):
        T.select_shard(ids, 1, None)
    with pytest.raises(ValueError, match="exceeds the 2 ids"):
        T.shard_range(2, 0, 3)


def test_merged_shards_equal_the_unsharded_submission(runs, data, tmp_path):
    whole, run = runs[0], _copy_run(runs[1], tmp_path)
    out = run / "submission.csv.gz"
    expected = T.ids_to_predict(data, False, None)[1]
    rows = [len(T.select_shard(expected, i, N)) for i in range(N)]
    assert sum(rows) == len(expected) and len(set(rows)) > 0
    result = S.merge_shards(out, N, expected_ids=expected)
    assert result.path == out and result.n_images == len(expected) == 16
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(whole.read_bytes())
    assert not list(run.glob(".*merging*"))  # the staging file is gone


def test_cli_merges_and_reports_status(runs, small_synthetic, tmp_path):
    run = _copy_run(runs[1], tmp_path)
    cmd = [sys.executable, "-m", "kaggle_utils.shards"]
    status = subprocess.run(
        [*cmd, "status", str(run), "--shards", str(N)], capture_output=True, text=True
    )
    assert status.returncode == 0 and status.stdout.count(": done") == N
    args = ["merge", str(run), "--shards", str(N), "--data-dir", str(small_synthetic)]
    merged = subprocess.run([*cmd, *args], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert gzip.decompress((run / "submission.csv.gz").read_bytes()) == gzip.decompress(
        runs[0].read_bytes()
    )


def test_missing_shard_fails_naming_it(runs, tmp_path):
    run = _copy_run(runs[1], tmp_path)
    path = S.shard_path(run / "submission.csv.gz", 1, N)
    path.unlink()
    path.with_name("shard-001-of-003.json").unlink()
    with pytest.raises(SubmissionError, match=r"shard 1 of 3 is missing .*shard=1, n_shards=3"):
        S.merge_shards(run / "submission.csv.gz", N)
    assert not (run / "submission.csv.gz").exists()


def test_interrupted_shard_fails_naming_it(members, data, runs, tmp_path):
    run = _copy_run(runs[1], tmp_path)
    out = run / "submission.csv.gz"
    S.shard_path(out, 2, N).unlink()  # its record stays: started, never finished

    class Stop(Exception):
        pass

    def stop(n_done: int) -> None:
        if n_done >= 4:
            raise Stop

    with pytest.raises(Stop):
        _predict(members, data, out, shard=2, n_shards=N, on_batch=stop)
    with pytest.raises(SubmissionError, match=r"shard 2 of 3 is incomplete .*parts.*shard=2"):
        S.merge_shards(out, N)
    assert "interrupted" in S.shard_status(out, N)[2]


def test_torn_shard_fails_naming_it(runs, tmp_path):
    run = _copy_run(runs[1], tmp_path)
    path = S.shard_path(run / "submission.csv.gz", 0, N)
    text = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    path.write_bytes(gzip.compress("".join(text[:-2]).encode()))  # two rows short
    with pytest.raises(
        SubmissionError, match=r"shard 0 of 3 is incomplete: .*holds 3 rows, its range has 5"
    ):
        S.merge_shards(run / "submission.csv.gz", N)
    raw = S.shard_path(runs[1] / "submission.csv.gz", 0, N).read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # a file cut short: a torn copy
    with pytest.raises(SubmissionError, match=r"shard 0 of 3 is truncated or corrupt .*shard=0"):
        S.merge_shards(run / "submission.csv.gz", N)


def test_shards_of_another_ensemble_are_refused(runs, tmp_path):
    run = _copy_run(runs[1], tmp_path)
    rec = S.shard_path(run / "submission.csv.gz", 2, N).with_name("shard-002-of-003.json")
    record = json.loads(rec.read_text())
    record["ensemble"]["threshold"] = 0.4
    rec.write_text(json.dumps(record))
    with pytest.raises(SubmissionError, match=r"shard 2 of 3 differs from shard 0 in ensemble"):
        S.merge_shards(run / "submission.csv.gz", N)


def test_merge_refuses_other_ids(runs, data, tmp_path):
    run = _copy_run(runs[1], tmp_path)
    expected = T.ids_to_predict(data, False, None)[1][:-1]
    with pytest.raises(SubmissionError, match="not these 15 sample-submission ids"):
        S.merge_shards(run / "submission.csv.gz", N, expected_ids=expected)


def test_pipeline_plans_06_per_shard_then_merge(tmp_path):
    import shutil

    import yaml

    from kaggle_utils.pipeline.plan import build_plan

    demo = Path(__file__).resolve().parents[1] / "params" / "demo"
    for f in demo.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    ens = tmp_path / "ensemble.yaml"
    spec = yaml.safe_load(ens.read_text())
    ens.write_text(yaml.safe_dump({**spec, "run_dir": str(tmp_path / "run"), "n_shards": 3}))
    plan = build_plan(ens, only=["06"], n_gpus=2)
    labels = [j.label for j in plan.jobs]
    assert labels == [f"06_submit:shard{i}of3" for i in range(3)] + ["06_submit:merge"]
    assert [j.parameters["shard"] for j in plan.jobs] == [0, 1, 2, None]
    assert {j.parameters["n_shards"] for j in plan.jobs} == {3}
    assert [j.gpu for j in plan.jobs] == ["0", "1", "0", None]
    assert plan.jobs[0].step == plan.jobs[2].step != plan.jobs[3].step  # merge: a batch after
