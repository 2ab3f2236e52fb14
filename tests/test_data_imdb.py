"""IMDB sources end to end on tiny synthetic copies; the real archive only under -m slow."""

import io
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from stackrnn_jax.data import (
    DataError,
    imdb,
    load_encoded,
    load_imdb_texts,
    pipeline,
    split_validation,
)
from stackrnn_jax.data.tokenizer import OOV_ID, START_ID

# Word "train"/"test" and "pos"/"neg" in each text let the tests check where it landed.
REVIEWS = {
    (split, label): [f"{split} {label} review {index}: {mood}<br />{extra}"
                     for index, (mood, extra) in enumerate(moods)]
    for split in ("train", "test")
    for label, moods in (
        ("pos", [("Great film!", "Don't miss it."), ("Loved it", "great acting"),
                 ("Wonderful", "")]),
        ("neg", [("Awful film.", "Don't watch it."), ("Boring", "bad acting"),
                 ("Terrible", f"{split}onlyword")]),
    )
}
TEXTS_PER_SPLIT = 6
# Line i of aclImdb/{split}/urls_{label}.txt: the IMDb page of review i (None: a line that is no
# title URL). Movies 7 and 8 have reviews of both labels, as real ones do.
MOVIES = {("train", "pos"): [7, 7, 8], ("train", "neg"): [8, 9, 7],
          ("test", "pos"): [20, 21, 21], ("test", "neg"): [20, None]}  # review 2: no line
REAL_ARCHIVE = Path(os.environ.get(imdb.DATA_PATH_ENV)
                    or Path(__file__).resolve().parents[1].parent / "shared/data/aclImdb.tar.gz")


def write_tree(parent: Path, reviews=REVIEWS, movies=MOVIES) -> Path:
    """An ``aclImdb/`` folder under ``parent`` with the official layout and its extra files;
    ``movies`` None: no urls files."""
    root = parent / "aclImdb"
    for (split, label), texts in reviews.items():
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for index, text in enumerate(texts):
            name = f"{index}_{8 if label == 'pos' else 2}.txt"
            (folder / name).write_text(text, encoding="utf-8")
    (root / "README").write_text("not a review")
    for (split, label), titles in (movies or {}).items():
        (root / split / f"urls_{label}.txt").write_text("".join(
            f"http://www.imdb.com/title/tt{title:07d}/usercomments\n" if title else "about:blank\n"
            for title in titles))
    (root / "train" / "unsup").mkdir(parents=True, exist_ok=True)
    (root / "train" / "unsup" / "0_0.txt").write_text("unlabeled")
    return root


def write_archive(path: Path, root: Path, arcname: str = "aclImdb") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(root, arcname=arcname)
    return path


def write_members(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def by_text(texts_and_labels) -> dict[str, int]:
    texts, labels = texts_and_labels
    return dict(zip(texts, labels.tolist(), strict=True))


@pytest.fixture(scope="module")
def imdb_tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def imdb_archive(tmp_path_factory, imdb_tree) -> Path:
    return write_archive(tmp_path_factory.mktemp("archive") / "aclImdb_v1.tar.gz", imdb_tree)


@pytest.fixture(scope="module")
def imdb_texts(tmp_path_factory, imdb_archive):
    return load_imdb_texts(imdb_archive, data_dir=tmp_path_factory.mktemp("tfds"))


@pytest.fixture(autouse=True)
def imdb_no_env(monkeypatch):
    """No test reads the user's local copy or data_dir by accident."""
    monkeypatch.delenv(imdb.DATA_PATH_ENV, raising=False)
    monkeypatch.delenv(imdb.DATA_DIR_ENV, raising=False)


def test_archive_gives_train_and_test_with_labels(imdb_texts):
    assert set(imdb_texts) == {"train", "test"}
    for split, (texts, labels) in imdb_texts.items():
        assert len(texts) == TEXTS_PER_SPLIT and labels.dtype == np.int32
        expected = {text: int(label == "pos")
                    for (s, label), group in REVIEWS.items() if s == split for text in group}
        assert by_text((texts, labels)) == expected


def expected_movies(split: str, movies=MOVIES) -> dict[str, int]:
    return {text: (movies[split, label] + [None] * 3)[index] or -1
            for (s, label), texts in REVIEWS.items() if s == split
            for index, text in enumerate(texts)}


@pytest.mark.parametrize("which", ["archive", "folder"])
def test_movies_come_from_the_urls_files(tmp_path, imdb_tree, imdb_archive, which):
    data = imdb_archive if which == "archive" else imdb_tree
    reviews = imdb.load_texts(imdb.resolve_source(data), tmp_path)
    for split in ("train", "test"):
        texts, _, movies = reviews[split]
        assert movies.dtype == np.int32
        assert dict(zip(texts, movies.tolist(), strict=True)) == expected_movies(split)


def test_copy_without_urls_files_has_unknown_movies(tmp_path):
    root = write_tree(tmp_path / "copy", movies=None)
    for data in (root, write_archive(tmp_path / "no-urls.tar.gz", root)):
        for reviews in imdb.load_texts(imdb.resolve_source(data), tmp_path / "tfds").values():
            assert (reviews.movies == -1).all()


def test_prepared_dataset_is_reused(tmp_path, imdb_archive, monkeypatch):
    first = load_imdb_texts(imdb_archive, data_dir=tmp_path)

    def fail(_):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(imdb, "read_reviews", fail)
    again = load_imdb_texts(imdb_archive, data_dir=tmp_path)
    assert again["train"][0] == first["train"][0]
    assert np.array_equal(again["test"][1], first["test"][1])


def test_changed_local_copy_is_prepared_again(tmp_path):
    root = write_tree(tmp_path / "copy")
    archive = write_archive(tmp_path / "imdb.tar.gz", root)
    first = load_imdb_texts(archive, data_dir=tmp_path / "tfds")
    (root / "train" / "pos" / "9_9.txt").write_text("one more review")
    write_archive(archive, root)  # same path, new size: a new source identity
    again = load_imdb_texts(archive, data_dir=tmp_path / "tfds")
    assert len(again["train"][0]) == len(first["train"][0]) + 1
    assert "one more review" in again["train"][0]


@pytest.mark.parametrize("which", ["folder", "parent"])
def test_folder_gives_same_dataset_as_archive(tmp_path, imdb_tree, imdb_texts, which):
    data = imdb_tree if which == "folder" else imdb_tree.parent
    texts = load_imdb_texts(data, data_dir=tmp_path)
    for split in ("train", "test"):  # same examples under the same keys: same order too
        assert texts[split][0] == imdb_texts[split][0]
        assert np.array_equal(texts[split][1], imdb_texts[split][1])


def test_env_vars_select_local_copy_and_data_dir(tmp_path, imdb_archive, imdb_texts, monkeypatch):
    monkeypatch.setenv(imdb.DATA_PATH_ENV, str(imdb_archive))
    monkeypatch.setenv(imdb.DATA_DIR_ENV, str(tmp_path / "env_data_dir"))
    texts = load_imdb_texts()
    assert by_text(texts["train"]) == by_text(imdb_texts["train"])
    assert (tmp_path / "env_data_dir" / "imdb_reviews").is_dir()


def test_dot_slash_member_names_are_accepted(tmp_path, imdb_tree, imdb_texts):
    archive = write_archive(tmp_path / "dot.tar.gz", imdb_tree, arcname="./aclImdb")
    texts = load_imdb_texts(archive, data_dir=tmp_path / "tfds")
    assert by_text(texts["test"]) == by_text(imdb_texts["test"])


def test_online_path_downloads_and_reads_without_tensorflow(tmp_path, imdb_archive, monkeypatch):
    """The fetched archive is read with tarfile (the stock builder would need tf.io.gfile)."""
    fetched = []

    def download(self, url):
        fetched.append(url)
        return imdb_archive

    monkeypatch.setattr(imdb, "download_host_reachable", lambda: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    texts = load_imdb_texts(data_dir=tmp_path)
    assert fetched == ["http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"]
    assert len(texts["train"][0]) == len(texts["test"][0]) == TEXTS_PER_SPLIT
    assert (tmp_path / "imdb_reviews" / "download").is_dir()


def test_online_path_under_tfds_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr(imdb, "download_host_reachable", lambda: True)
    with tfds.testing.mock_data(num_examples=5):
        texts = load_imdb_texts(data_dir=tmp_path)
    for split in ("train", "test"):
        split_texts, labels = texts[split]
        assert len(split_texts) == 5 and all(isinstance(text, str) for text in split_texts)
        assert labels.shape == (5,) and labels.dtype == np.int32 and set(labels.tolist()) <= {0, 1}


def test_offline_without_local_copy_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(imdb, "download_host_reachable", lambda: False)
    monkeypatch.setattr(imdb.ImdbReviews, "download_and_prepare",
                        lambda *args, **kwargs: pytest.fail("tried to download"))
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        load_imdb_texts(data_dir=tmp_path)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message and "--data" in message and imdb.DATA_PATH_ENV in message


def test_probe_reports_closed_and_open_ports(monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert imdb.download_host_reachable(f"http://127.0.0.1:{port}/x.tar.gz", timeout=2)
    start = time.monotonic()
    assert not imdb.download_host_reachable(f"http://127.0.0.1:{port}/x.tar.gz", timeout=2)
    assert time.monotonic() - start < 1  # refused: no waiting for the timeout


def test_probe_gives_up_on_a_hanging_name_lookup(monkeypatch):
    """Name resolution ignores socket timeouts; the probe must not wait for it."""
    release = threading.Event()

    def hanging_lookup(*args, **kwargs):
        release.wait(30)
        raise OSError("simulated lookup that never answers")

    monkeypatch.setattr(socket, "create_connection", hanging_lookup)
    start = time.monotonic()
    assert not imdb.download_host_reachable(timeout=0.3)
    assert time.monotonic() - start < 2
    release.set()  # let the abandoned probe thread end inside this test


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*nowhere"):
        load_imdb_texts(tmp_path / "nowhere", data_dir=tmp_path)


def test_folder_without_layout(tmp_path):
    (tmp_path / "reviews").mkdir()
    with pytest.raises(DataError, match="expected an aclImdb/ folder"):
        load_imdb_texts(tmp_path / "reviews", data_dir=tmp_path / "tfds")


def test_archive_without_layout(tmp_path):
    members = {"reviews/good.txt": b"fine", "aclImdb/README": b"x",
               "aclImdb/train/pos/1.json": b"{}"}
    archive = write_members(tmp_path / "other.tar.gz", members)
    with pytest.raises(DataError, match=r"no reviews found; expected aclImdb/\{train,test\}"):
        load_imdb_texts(archive, data_dir=tmp_path / "tfds")


def test_not_an_archive(tmp_path):
    (tmp_path / "aclImdb.tar.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="aclImdb.tar.gz: not a readable tar archive"):
        load_imdb_texts(tmp_path / "aclImdb.tar.gz", data_dir=tmp_path / "tfds")


def test_empty_split(tmp_path):
    members = {f"aclImdb/{split}/{label}/{index}_1.txt": text.encode()
               for (split, label), texts in REVIEWS.items() if (split, label) != ("test", "neg")
               for index, text in enumerate(texts)}
    archive = write_members(tmp_path / "no_test_neg.tar.gz", members)
    with pytest.raises(DataError, match="test split is empty for label 'neg'"):
        load_imdb_texts(archive, data_dir=tmp_path / "tfds")


def test_non_utf8_review_is_named_in_archive_and_folder(tmp_path):
    root = write_tree(tmp_path)
    (root / "train" / "neg" / "7_1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"train/neg/7_1\.txt.*not valid UTF-8") as error:
        load_imdb_texts(root, data_dir=tmp_path / "tfds")
    assert str(root / "train" / "neg" / "7_1.txt") in str(error.value)
    archive = write_archive(tmp_path / "latin1.tar.gz", root)
    member = r"latin1\.tar\.gz \(member aclImdb/train/neg/7_1\.txt\)"
    with pytest.raises(DataError, match=member + ": not valid UTF-8"):
        load_imdb_texts(archive, data_dir=tmp_path / "tfds")


def test_load_encoded_builds_then_reloads_cache(tmp_path, imdb_archive, monkeypatch):
    settings = {"num_words": 20, "maxlen": 6, "padding": "post", "cache_dir": tmp_path / "cache",
                "data_dir": tmp_path / "tfds"}
    encoded = load_encoded(imdb_archive, **settings)
    assert encoded.train.ids.shape == (TEXTS_PER_SPLIT, 6) and encoded.train.ids.dtype == np.int32
    assert encoded.padding == "post" and encoded.maxlen == 6
    assert (encoded.train.ids[:, 0] == START_ID).all() and encoded.train.ids.max() < 20
    assert sorted(encoded.train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert "trainonlyword" in encoded.vocab.words  # the vocabulary sees train only
    assert "testonlyword" not in encoded.vocab.words
    assert "train" in encoded.vocab.words and "test" not in encoded.vocab.words
    assert (encoded.test.ids == OOV_ID).any()
    texts = imdb.load_texts(imdb.resolve_source(imdb_archive), tmp_path / "tfds")["train"].texts
    assert encoded.train.movies.tolist() == [expected_movies("train")[t] for t in texts]

    reads = []
    monkeypatch.setattr(pipeline, "load_texts",
                        lambda *args: reads.append(args) or imdb.load_texts(*args))
    cached = load_encoded(imdb_archive, **settings)
    for split in ("train", "test"):
        for field in ("ids", "lengths", "labels", "movies"):
            built, reloaded = (getattr(getattr(result, split), field)
                               for result in (encoded, cached))
            assert reloaded.dtype == np.int32 and np.array_equal(reloaded, built)
    assert cached.vocab == encoded.vocab and not reads
    assert not list((tmp_path / "cache").glob(".*tmp"))  # atomic write left no temporary file

    longer = load_encoded(imdb_archive, **(settings | {"maxlen": 7}))  # other settings, other entry
    assert longer.train.ids.shape == (TEXTS_PER_SPLIT, 7)
    assert len(reads) == 1 and len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_load_encoded_rejects_bad_padding_before_reading(tmp_path):
    with pytest.raises(ValueError, match="padding must be one of"):
        load_encoded(tmp_path / "never-read", padding="middle")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason=f"no IMDB archive at {REAL_ARCHIVE}")
def test_real_archive(tmp_path):
    encoded = load_encoded(REAL_ARCHIVE, cache_dir=tmp_path / "cache", data_dir=tmp_path / "tfds")
    for split in (encoded.train, encoded.test):
        assert split.ids.shape == (25_000, 500)
        assert np.bincount(split.labels).tolist() == [12_500, 12_500]
        assert split.lengths.min() >= 1 and split.lengths.max() == 500
    assert len(encoded.vocab.words) == 10_000 - 3 and encoded.vocab.words[0] == "the"
    assert (encoded.train.movies > 0).all() and len(np.unique(encoded.train.movies)) > 3000
    train, validation = split_validation(encoded.train, 0.2, seed=0, by="movie")
    assert not set(train.movies.tolist()) & set(validation.movies.tolist())
    assert np.bincount(validation.labels).tolist() == [2_500, 2_500]
    tokens = encoded.test.ids[encoded.test.ids > START_ID]
    assert 0.03 < np.mean(tokens == OOV_ID) < 0.08
    start = time.monotonic()
    load_encoded(REAL_ARCHIVE, cache_dir=tmp_path / "cache", data_dir=tmp_path / "tfds")
    assert time.monotonic() - start < 1.0
