"""Tests for the atomic-format loader (export/data/atomic.py)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from export.data import atomic as datasets
from export.data.atomic import (AtomicSpec, DataError, load_atomic, load_from_wheel,
                             load_movielens_100k)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ml-100k"


def ml100k_dir() -> Path:
    """The directory holding ML-100K: ../shared/data/ml-100k or $RECSYS_DATA_DIR; the test fails (never
    skips) when neither has it, so a run without the data cannot pass."""
    import os

    for candidate in (SHARED, *([Path(os.environ["RECSYS_DATA_DIR"])] if os.environ.get("RECSYS_DATA_DIR") else [])):
        for d in (candidate, candidate / "ml-100k"):
            if (d / "ml-100k.inter").is_file():
                return d
    pytest.fail(f"MovieLens-100K not found at {SHARED} or $RECSYS_DATA_DIR", pytrace=False)

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"


def write(tmp_path: Path, name: str = "d", inter: str | None = None,
          user: str | None = None, item: str | None = None) -> Path:
    """Write the given atomic files (None = leave that file out)."""
    for suffix, text in (("inter", inter), ("user", user), ("item", item)):
        if text is not None:
            (tmp_path / f"{name}.{suffix}").write_text(text, encoding="utf-8")
    return tmp_path


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens_100k(ml100k_dir())


def test_ml100k_shape_and_types(ml100k):
    ds = ml100k
    assert ds.name == "ml-100k"
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1682, 100_000)
    it = ds.interactions
    assert it.user.dtype == np.int32 and it.item.dtype == np.int32
    assert it.rating.dtype == np.float32 and it.timestamp.dtype == np.int64
    assert np.all(np.diff(it.timestamp) >= 0)
    assert set(np.unique(it.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # Numeric id order: dense id d is external id d+1 in ML-100K.
    assert ds.user_ids[:3].tolist() == ["1", "2", "3"]
    assert ds.item_ids[-1] == "1682"
    assert np.unique(it.user).size == 943 and np.unique(it.item).size == 1682


def test_ml100k_features(ml100k):
    ds = ml100k
    assert ds.user_cat_names == ["age", "gender", "occupation"]
    assert ds.user_cat.shape == (943, 3) and ds.user_cat.dtype == np.int32
    assert ds.user_cat_vocab == [len(v) + 1 for v in ds.user_cat_values]
    assert ds.user_cat_values[1] == ["F", "M"]
    assert ds.user_cat_vocab[2] == 22                 # 21 occupations + unknown
    assert ds.user_cat.min() >= 1                     # every user has all three fields
    # user 1: 24, M, technician
    age, gender, occ = ds.user_cat[0]
    assert ds.user_cat_values[0][age - 1] == "24"
    assert ds.user_cat_values[1][gender - 1] == "M"
    assert ds.user_cat_values[2][occ - 1] == "technician"

    assert ds.item_cat_names == ["release_year"] and ds.item_cat.shape == (1682, 1)
    # The 19 MovieLens genres, including the literal "unknown" genre.
    assert len(ds.item_bag_names) == 19 and "unknown" in ds.item_bag_names
    assert ds.item_bag.shape == (1682, 19) and ds.item_bag.dtype == np.uint8
    assert ds.item_bag.sum(axis=1).min() >= 1         # every item has a genre
    toy = ds.item_bag[0]
    assert [g for g, on in zip(ds.item_bag_names, toy) if on] == ["Animation", "Children's", "Comedy"]

    assert ds.item_titles[0] == "Toy Story"
    assert ds.item_titles[1] == "GoldenEye"
    assert ds.item_titles[49] == "Star Wars"
    assert "Misérables, Les" in ds.item_titles.tolist()   # UTF-8 kept


def test_env_var_resolution(monkeypatch):
    monkeypatch.setenv("RECSYS_DATA_DIR", str(ml100k_dir().parent))  # parent dir also accepted
    assert load_movielens_100k().n_items == 1682


def test_explicit_dir_without_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"ml-100k\.inter not found; set RECSYS_DATA_DIR"):
        load_movielens_100k(tmp_path)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="RECSYS_DATA_DIR"):
        load_movielens_100k()


# --------------------------------------------------------------------------- small files


def test_small_dataset_ids_codes_and_order(tmp_path):
    d = write(
        tmp_path,
        inter=INTER + "10\ta\t4\t300\n2\tb\t5\t100\n10\tb\t3\t100\n2\ta\t1\t200\n",
        user=USER + "2\t30\tF\t\t111\n10\t20\tM\tother\t222\n99\t30\tM\tother\t333\n",
        item=ITEM + "b\tThe  Big One\t1999\tX Y\nc\tCee\t\tY\n",
    )
    ds = load_atomic(d, "d")
    # Users: union of inter and user file, numeric order (2 < 10 < 99).
    assert ds.user_ids.tolist() == ["2", "10", "99"]
    assert ds.item_ids.tolist() == ["a", "b", "c"]           # 'a' only in the inter file
    it = ds.interactions
    # Sorted by (timestamp, user, item).
    assert it.timestamp.tolist() == [100, 100, 200, 300]
    assert it.user.tolist() == [0, 1, 0, 1]
    assert it.item.tolist() == [1, 1, 0, 0]
    assert it.rating.tolist() == [5.0, 3.0, 1.0, 4.0]
    # Categorical codes: numeric vocab order, 0 = missing (empty field or no row).
    assert ds.user_cat_values == [["20", "30"], ["F", "M"], ["other"]]
    assert ds.user_cat_vocab == [3, 3, 2]
    assert ds.user_cat.tolist() == [[2, 1, 0], [1, 2, 1], [2, 2, 1]]
    assert ds.item_cat.tolist() == [[0], [1], [0]]
    assert ds.item_bag_names == ["X", "Y"]
    assert ds.item_bag.tolist() == [[0, 0], [1, 1], [0, 1]]
    assert ds.item_titles.tolist() == ["", "The  Big One", "Cee"]


def test_side_tables_optional_and_implicit_rating(tmp_path):
    d = write(tmp_path, inter="user_id:token\titem_id:token\ttimestamp:float\n"
                              "u1\ti1\t5\nu0\ti1\t5.7\n\n")
    ds = load_atomic(d, "d")
    assert ds.user_ids.tolist() == ["u0", "u1"]
    assert ds.user_cat.shape == (2, 0) and ds.item_cat.shape == (1, 0)
    assert ds.item_bag.shape == (1, 0) and ds.item_titles.tolist() == [""]
    assert ds.interactions.rating.tolist() == [1.0, 1.0]
    assert ds.interactions.timestamp.tolist() == [5, 5]      # floored to seconds
    assert ds.interactions.user.tolist() == [0, 1]           # tie broken by user


def test_spec_from_dict_selects_columns(tmp_path):
    d = write(tmp_path,
              inter="user_id:token\titem_id:token\tlabel:float\tts:float\n1\t1\t0\t9\n",
              user="user_id:token\tcountry:token\n1\tfr\n",
              item="item_id:token\ttags:token_seq\n1\tx y\n")
    spec = AtomicSpec.from_dict({"user_fields": ["country"], "item_fields": [],
                                 "item_bag_field": "tags", "item_title_field": None,
                                 "rating_field": "label", "timestamp_field": "ts"})
    ds = load_atomic(d, "d", spec)
    assert ds.user_cat_names == ["country"] and ds.user_cat_values == [["fr"]]
    assert ds.item_bag_names == ["x", "y"] and ds.item_titles.tolist() == [""]
    assert ds.interactions.rating.tolist() == [0.0]
    with pytest.raises(ValueError, match="unknown AtomicSpec keys"):
        AtomicSpec.from_dict({"user_feilds": []})


# --------------------------------------------------------------------------- errors


def test_missing_inter_file(tmp_path):
    with pytest.raises(DataError, match=r"d\.inter not found; .*RECSYS_DATA_DIR"):
        load_atomic(tmp_path, "d")


@pytest.mark.parametrize(
    "inter, line, message",
    [
        ("", 1, "file is empty"),
        ("\nuser_id:token\n", 1, "first line is blank"),
        ("user_id:token\titem_id\ttimestamp:float\n1\t1\t1\n", 1, "no ':type' suffix"),
        ("user_id:token\titem_id:tokn\ttimestamp:float\n1\t1\t1\n", 1, "unknown type 'tokn'"),
        ("user_id:token\titem_id:token\n1\t1\n", 1, "no 'timestamp' column"),
        ("user_id:token\ttimestamp:float\n1\t1\n", 1, "no 'item_id' column"),
        ("item_id:token\ttimestamp:float\n1\t1\n", 1, "no 'user_id' column"),
        (INTER + "1\t1\t3\t10\n1\t2\t3\n", 3, "3 tab-separated fields but the header has 4"),
        (INTER + "1\t1\t3\t10\n\n1\t2\t3\t1\t9\n", 4, "5 tab-separated fields"),
        (INTER + "1\t1\t3\t10\n1\t2\t3\tnoon\n", 3, "timestamp value 'noon' is not a finite number"),
        (INTER + "1\t1\tgood\t10\n", 2, "rating value 'good' is not a finite number"),
        (INTER + "1\t1\t\t10\n", 2, "rating value '' is not a finite number"),
        (INTER + "1\t1\t3\tnan\n", 2, "timestamp value 'nan'"),
        (INTER + "1\t\t3\t10\n", 2, "empty item_id"),
        (INTER, 2, "no interaction rows"),
        (INTER + "\n\n", 2, "no interaction rows"),
    ],
)
def test_inter_errors_name_file_and_line(tmp_path, inter, line, message):
    write(tmp_path, inter=inter)
    with pytest.raises(DataError) as err:
        load_atomic(tmp_path, "d")
    text = str(err.value)
    assert f"d.inter, line {line}:" in text
    assert message in text


@pytest.mark.parametrize(
    "user, item, where, message",
    [
        (USER + "1\t20\tM\tother\n", None, "d.user, line 2:", "4 tab-separated fields"),
        (USER + "1\t20\tM\tother\t1\n1\t30\tF\tother\t2\n", None, "d.user, line 3:", "duplicate user_id '1'"),
        ("age:token\n20\n", None, "d.user, line 1:", "no 'user_id' column"),
        ("user_id:token\tage:token\n1\t20\n", None, "d.user, line 1:", "no 'gender' column"),
        (None, "item_id:token\tmovie_title:token_seq\n1\tX\n", "d.item, line 1:", "no 'release_year' column"),
        (None, ITEM + "1\tX\t1999\n", "d.item, line 2:", "3 tab-separated fields"),
        (None, "item_id:token\tyear:tok\n", "d.item, line 1:", "unknown type 'tok'"),
    ],
)
def test_side_table_errors_name_file_and_line(tmp_path, user, item, where, message):
    write(tmp_path, inter=INTER + "1\t1\t3\t10\n", user=user, item=item)
    with pytest.raises(DataError) as err:
        load_atomic(tmp_path, "d")
    assert where in str(err.value) and message in str(err.value)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- wheel


def fake_wheel(path: Path, with_side_tables: bool = True) -> Path:
    """A zip with the recbole member layout holding a three-row dataset."""
    prefix = "recbole/dataset_example/ml-100k/ml-100k"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}.inter", INTER + "1\t2\t4\t20\n2\t1\t5\t10\n1\t1\t3\t30\n")
        if with_side_tables:
            zf.writestr(f"{prefix}.user", USER + "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n")
            zf.writestr(f"{prefix}.item", ITEM + "1\tToy Story\t1995\tAnimation Children's Comedy\n"
                                                "2\tGoldenEye\t1995\tAction Adventure Thriller\n")
        zf.writestr("recbole/__init__.py", "")
    return path


def test_load_from_wheel(tmp_path):
    ds = load_from_wheel(fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl"))
    assert ds.name == "ml-100k"
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2, 2, 3)
    assert ds.interactions.timestamp.tolist() == [10, 20, 30]
    assert ds.item_titles.tolist() == ["Toy Story", "GoldenEye"]
    assert len(ds.item_bag_names) == 6


def test_wheel_errors_name_the_member(tmp_path):
    bad = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", INTER + "1\t2\t4\n")
    with pytest.raises(DataError, match=r"\.whl!recbole/dataset_example/ml-100k/ml-100k\.inter, line 2:"):
        load_from_wheel(bad)
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
    with pytest.raises(DataError, match="not found in the wheel"):
        load_from_wheel(bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot open as a zip"):
        load_from_wheel(bad)


def test_movielens_falls_back_to_cached_wheel(tmp_path, monkeypatch):
    """No data dir anywhere: the loader reads the wheel already in the cache, no network."""
    repo = tmp_path / "repo"
    cache = repo / ".cache" / "recbole"
    cache.mkdir(parents=True)
    fake_wheel(cache / "recbole-1.2.1-py3-none-any.whl")
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "REPO_ROOT", repo)        # so ../shared is absent too

    def no_download(*args, **kwargs):
        raise AssertionError("must not call pip when the wheel is cached")

    monkeypatch.setattr(datasets.subprocess, "run", no_download)
    ds = load_movielens_100k()
    assert ds.item_titles.tolist() == ["Toy Story", "GoldenEye"]


def test_failed_download_gives_clear_error(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "REPO_ROOT", repo)
    calls = []

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement recbole==1.2.1"

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return Failed()

    monkeypatch.setattr(datasets.subprocess, "run", fake_run)
    with pytest.raises(DataError, match=r"downloading recbole==1\.2\.1 failed.*set RECSYS_DATA_DIR"):
        load_movielens_100k()
    assert calls and calls[0][1:] == ["-m", "pip", "download", "--no-deps", "recbole==1.2.1",
                                      "-d", str(repo / ".cache" / "recbole")]


# --------------------------------------------------------------------------- columnar read (pyarrow) and Parquet


def assert_same_dataset(a, b):
    for f in ("user_ids", "item_ids", "user_cat", "item_cat", "item_bag", "item_titles"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    for f in ("user", "item", "rating", "timestamp"):
        x, y = getattr(a.interactions, f), getattr(b.interactions, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    for f in ("user_cat_names", "user_cat_vocab", "item_cat_names", "item_cat_vocab", "item_bag_names",
              "user_cat_values", "item_cat_values"):
        assert getattr(a, f) == getattr(b, f), f


def test_columnar_loader_equals_the_plain_parser_on_ml100k(ml100k):
    plain = load_atomic(ml100k_dir(), "ml-100k", columnar=False)
    assert_same_dataset(ml100k, plain)


def test_columnar_read_hands_odd_files_to_the_plain_parser(tmp_path):
    # quotes are data, \r\n line ends, a blank line, a float Arrow reads and a BOM: the same as the plain parser
    text = "\ufeff" + INTER + 'u"1\t"i\t4\t10\r\n\r\nu2\ti\t3.5\t1e1\r\n'
    d = write(tmp_path, inter=text)
    assert_same_dataset(load_atomic(d, "d"), load_atomic(d, "d", columnar=False))
    assert load_atomic(d, "d").user_ids.tolist() == ['u"1', "u2"]
    # a value only the plain parser accepts (numpy reads " 4" as 4.0): the file is read the plain way
    (tmp_path / "b").mkdir()
    d2 = write(tmp_path / "b", inter=INTER + "u1\ti\t 4\t7\n")
    assert load_atomic(d2, "d").interactions.rating.tolist() == [4.0]


def test_parquet_log_equals_the_atomic_file(tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = ml100k_dir()
    rows = [line.split("\t") for line in (src / "ml-100k.inter").read_text().splitlines()[1:] if line]
    table = pa.table({"user_id": pa.array([int(r[0]) for r in rows], pa.int64()),   # integer ids
                      "item_id": pa.array([r[1] for r in rows], pa.string()),        # string ids
                      "rating": pa.array([float(r[2]) for r in rows], pa.float32()),
                      "timestamp": pa.array([int(r[3]) for r in rows], pa.int64())})
    pq.write_table(table, tmp_path / "ml-100k.inter.parquet")
    for suffix in ("user", "item"):
        shutil.copy(src / f"ml-100k.{suffix}", tmp_path / f"ml-100k.{suffix}")
    assert_same_dataset(load_atomic(tmp_path, "ml-100k"), load_atomic(src, "ml-100k"))


def test_parquet_errors_name_the_column_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": ["a", None], "item_id": ["x", "y"], "timestamp": [1, 2]}),
                   tmp_path / "p.inter.parquet")
    with pytest.raises(DataError, match=r"row 1: user_id is missing"):
        load_atomic(tmp_path, "p")
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"]}), tmp_path / "q.inter.parquet")
    with pytest.raises(DataError, match=r"no timestamp column"):
        load_atomic(tmp_path, "q")
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1.0, float("nan")]}),
                   tmp_path / "r.inter.parquet")
    with pytest.raises(DataError, match=r"row 1: timestamp is missing or not finite"):
        load_atomic(tmp_path, "r")
