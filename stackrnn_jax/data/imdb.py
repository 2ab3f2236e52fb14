"""IMDB reviews (Maas et al. 2011) as raw texts and labels, through tensorflow-datasets.

Both sources end as the tfds dataset ``imdb_reviews`` with splits ``train`` and
``test`` (25,000 reviews each; label 0 = negative, 1 = positive):

* online: the official ``aclImdb_v1.tar.gz`` is downloaded by tfds (checksum
  checked against the stock ``imdb_reviews`` builder's record);
* offline: a local copy given as ``data`` or ``$STACKRNN_IMDB_PATH``: the official
  archive, any tar archive with the ``aclImdb/{train,test}/{pos,neg}/*.txt`` layout,
  or an extracted ``aclImdb/`` folder (its own path or its parent's).

Either way the builder below reads the archive with :mod:`tarfile` and prepares an
``array_record`` dataset, so neither preparing nor reading needs TensorFlow (the
stock builder's ``dl_manager.iter_archive`` opens files through ``tf.io.gfile``).

Each review also carries its movie: ``aclImdb/{split}/urls_{label}.txt`` holds on line
``i`` the IMDb page (``.../title/ttNNNNNNN/usercomments``) of the review ``i_<rating>.txt``
in ``{split}/{label}``; the feature ``movie`` is that title number, -1 where a copy has
no such line. Up to 30 reviews share a movie, and train and test are disjoint sets of
movies, so a validation split that stands for the test split holds out whole movies
(``pipeline.split_validation``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import tarfile
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.datasets.imdb_reviews import imdb_reviews_dataset_builder as stock_imdb

DATA_PATH_ENV = "STACKRNN_IMDB_PATH"
DATA_DIR_ENV = "STACKRNN_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/stackrnn_jax/tfds")
SPLITS = ("train", "test")
LABEL_NAMES = ("neg", "pos")  # index = label id, as in the stock builder's ClassLabel
ONLINE_IDENTITY = "tfds-online"

_DOWNLOAD_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
_PROBE_TIMEOUT_S = 3.0
_REVIEW_PATH = re.compile(r"aclImdb/(train|test)/(neg|pos)/[^/]+\.txt")
_URLS_PATH = re.compile(r"aclImdb/(train|test)/urls_(neg|pos)\.txt")
_REVIEW_INDEX = re.compile(r"(\d+)_\d+\.txt")  # <index>_<rating>.txt: index = line of urls
_MOVIE_URL = re.compile(r"/title/tt(\d+)")
UNKNOWN_MOVIE = -1
# 1.1.0: the ``movie`` feature. A version of its own, so that a dataset prepared without it
# is prepared again rather than read.
_VERSION = "1.1.0"
_HOW_TO_PASS_LOCAL_COPY = (
    "pass a local copy (aclImdb_v1.tar.gz or an extracted aclImdb/ folder) "
    f"with --data PATH or {DATA_PATH_ENV}=PATH"
)


class DataError(ValueError):
    """The IMDB data cannot be found or read; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the reviews come from.

    ``path`` is a tar archive or an ``aclImdb`` folder, or None for the online
    download; ``identity`` changes when the local copy does (path, size, mtimes)
    and keys everything prepared or cached from it.
    """

    path: Path | None
    identity: str


def resolve_source(data: str | os.PathLike | None) -> Source:
    """Resolves ``data`` (else ``$STACKRNN_IMDB_PATH``, else online) to a :class:`Source`."""
    data = data or os.environ.get(DATA_PATH_ENV)
    if not data:
        return Source(path=None, identity=ONLINE_IDENTITY)
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"IMDB data path does not exist: {path}")
    path = path.resolve()
    if path.is_file():
        stat = path.stat()
        return Source(path, f"archive:{path}:{stat.st_size}:{stat.st_mtime_ns}")
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    if not all((root / split).is_dir() for split in SPLITS):
        raise DataError(f"{path}: expected an aclImdb/ folder with train/ and test/, or its parent")
    # Adding, removing or renaming a review changes its class folder's mtime.
    folders = [root] + [root / split / label for split in SPLITS for label in LABEL_NAMES]
    mtimes = ":".join(str(folder.stat().st_mtime_ns) if folder.is_dir() else "-"
                      for folder in folders)
    return Source(root, f"folder:{root}:{mtimes}")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The tfds data_dir: ``data_dir``, else ``$STACKRNN_DATA_DIR``, else the default."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def _wanted(key: str) -> bool:
    """A review or a urls file (the other members are never read)."""
    return bool(_REVIEW_PATH.fullmatch(key) or _URLS_PATH.fullmatch(key))


def _archive_members(archive_path: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yields ``(aclImdb/..., where, raw bytes)`` per review and urls file of a tar archive."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            for member in archive:
                key = member.name.removeprefix("./")
                content = archive.extractfile(member) if member.isfile() else None
                if content is not None and _wanted(key):
                    yield key, f"{archive_path} (member {key})", content.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{archive_path}: not a readable tar archive ({error})") from error


def _folder_files(root: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yields ``(aclImdb/..., where, raw bytes)`` per review and urls file under ``root``."""
    for split in SPLITS:
        for label in LABEL_NAMES:
            files = sorted((root / split / label).glob("*.txt"))
            urls = root / split / f"urls_{label}.txt"
            if urls.is_file():
                files.append(urls)
            for file in files:
                try:
                    raw = file.read_bytes()
                except OSError as error:
                    raise DataError(f"{file}: cannot read ({error.strerror})") from error
                # the key names the file as inside the archive, whatever the folder's name
                yield f"aclImdb/{file.relative_to(root).as_posix()}", str(file), raw


def _movie_ids(raw: bytes) -> list[int]:
    """Per line of a urls file, the IMDb title number of its URL (-1 where there is none)."""
    found = (_MOVIE_URL.search(line) for line in raw.decode("utf-8", "replace").splitlines())
    return [int(match.group(1)) if match else UNKNOWN_MOVIE for match in found]


def _movie(key: str, movies: list[int]) -> int:
    """The movie of review ``key`` (``.../<index>_<rating>.txt``): line ``index`` of its urls."""
    match = _REVIEW_INDEX.fullmatch(key.rsplit("/", 1)[-1])
    index = int(match.group(1)) if match else len(movies)
    return movies[index] if index < len(movies) else UNKNOWN_MOVIE


def read_reviews(path: Path) -> dict[str, list[tuple[str, dict[str, str | int]]]]:
    """Reads every labeled review of a local copy into tfds examples, checking the layout.

    Returns ``{split: [(key, {"text": str, "label": "neg" | "pos", "movie": int}), ...]}``;
    keys are the paths inside the archive, so a folder and its archive give the same
    dataset. ``movie`` is -1 (``UNKNOWN_MOVIE``) for every review of a label whose urls
    file is missing.
    """
    examples: dict[tuple[str, str], list] = {(split, label): []
                                             for split in SPLITS for label in LABEL_NAMES}
    movies: dict[tuple[str, str], list[int]] = {}  # urls files may come before or after
    for key, where, raw in _archive_members(path) if path.is_file() else _folder_files(path):
        urls = _URLS_PATH.fullmatch(key)
        if urls:
            movies[urls.group(1), urls.group(2)] = _movie_ids(raw)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{where}: not valid UTF-8 (byte {error.start})") from error
        _, split, label, _ = key.split("/")
        examples[split, label].append((key, {"text": text.strip(), "label": label}))
    if not any(examples.values()):
        raise DataError(f"{path}: no reviews found; "
                        "expected aclImdb/{train,test}/{pos,neg}/*.txt")
    for (split, label), rows in examples.items():
        if not rows:
            raise DataError(f"{path}: the {split} split is empty for label {label!r} "
                            f"(no aclImdb/{split}/{label}/*.txt)")
        for key, example in rows:
            example["movie"] = _movie(key, movies.get((split, label), []))
    return {split: examples[split, "neg"] + examples[split, "pos"] for split in SPLITS}


class _SourceConfig(stock_imdb.IMDBReviewsConfig):
    """A builder config per source, so copies never overwrite each other or the stock config."""

    def __init__(self, *, source: Source, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.version = tfds.core.Version(_VERSION)  # the stock config fixes 1.0.0


class ImdbReviews(stock_imdb.Builder, skip_registration=True):  # type: ignore[call-arg]
    """The stock ``imdb_reviews`` builder, reading train and test only, with :mod:`tarfile`.

    Same name and metadata as the stock builder, and its features plus ``movie``; not
    registered, so ``tfds.builder("imdb_reviews")`` still returns the stock one.
    """

    name = "imdb_reviews"
    pkg_dir_path = stock_imdb.Builder._get_pkg_dir_path()  # the stock README and citations
    url_infos = stock_imdb.Builder.url_infos  # official archive's checksum

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
                "movie": tfds.features.Scalar(np.int64, doc="IMDb title number; -1: unknown"),
            }),
            supervised_keys=("text", "label"),
            homepage="http://ai.stanford.edu/~amaas/data/sentiment/",
        )

    def _split_generators(self, dl_manager):
        source = self.builder_config.source
        archive = source.path or Path(dl_manager.download(_DOWNLOAD_URL))
        return {split: self._generate_examples(examples)
                for split, examples in read_reviews(archive).items()}

    def _generate_examples(self, examples):
        yield from examples


def imdb_builder(source: Source, data_dir: str | os.PathLike | None = None) -> ImdbReviews:
    """The array_record builder for ``source`` under ``data_dir`` (see :func:`resolve_data_dir`)."""
    if source.path is None:
        config_name, description = "download", "Official archive, downloaded by tfds"
    else:
        config_name = "local_" + hashlib.sha256(source.identity.encode()).hexdigest()[:12]
        description = f"Local copy {source.path}"
    return ImdbReviews(
        config=_SourceConfig(name=config_name, description=description, source=source),
        data_dir=os.fspath(resolve_data_dir(data_dir)),
        file_format="array_record",
    )


def download_host_reachable(url: str = _DOWNLOAD_URL, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host serving ``url`` (or its proxy) opens within ``timeout``.

    Offline, tfds retries DNS for minutes; this answers in at most ``timeout`` s
    (the connect runs in a daemon thread because name resolution has no timeout).
    """
    target = urlsplit(urllib.request.getproxies().get(urlsplit(url).scheme) or url)
    address = (target.hostname, target.port or (443 if target.scheme == "https" else 80))
    outcome = []  # filled by the thread: whether it connected

    def connect():
        try:
            with socket.create_connection(address, timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome == [True]


class Reviews(NamedTuple):
    """One split: ``texts`` (``num_reviews`` str), ``labels`` and ``movies``
    ``(num_reviews,)`` int32 (1 = positive; IMDb title numbers, -1 where unknown)."""

    texts: list[str]
    labels: np.ndarray
    movies: np.ndarray


def _read_split(builder: ImdbReviews, split: str) -> Reviews:
    source = builder.as_data_source(split)
    try:
        rows = source.__getitems__(list(range(len(source))))  # one read: ~8x faster than by row
    except TypeError:  # tfds.testing.mock_data's sources only implement __getitem__
        rows = [source[index] for index in range(len(source))]
    # Text features read back as bytes (as str from tfds.testing.mock_data).
    texts = [row["text"] if isinstance(row["text"], str) else row["text"].decode("utf-8")
             for row in rows]
    labels = np.fromiter((row["label"] for row in rows), dtype=np.int32, count=len(rows))
    movies = np.fromiter((row["movie"] for row in rows), dtype=np.int32, count=len(rows))
    return Reviews(texts, labels, movies)


def _download_and_prepare(builder: ImdbReviews) -> None:
    """Downloads the official archive and prepares it, failing in seconds when offline."""
    if not download_host_reachable():
        host = urlsplit(_DOWNLOAD_URL).hostname
        raise DataError(f"cannot reach {host} to download IMDB; {_HOW_TO_PASS_LOCAL_COPY}")
    try:
        builder.download_and_prepare()
    except (tfds.download.DownloadError, NonMatchingChecksumError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"IMDB download failed ({reason}); {_HOW_TO_PASS_LOCAL_COPY}") from error


def load_texts(source: Source, data_dir: str | os.PathLike | None = None) -> dict[str, Reviews]:
    """Prepares ``source`` once under ``data_dir``, then reads both splits (see load_imdb_texts),
    with each review's movie."""
    builder = imdb_builder(source, data_dir)
    if not builder.is_prepared():
        if source.path is None:
            _download_and_prepare(builder)
        else:
            builder.download_and_prepare()
    return {split: _read_split(builder, split) for split in SPLITS}


def load_imdb_texts(data: str | os.PathLike | None = None, *,
                    data_dir: str | os.PathLike | None = None
                    ) -> dict[str, tuple[list[str], np.ndarray]]:
    """Raw IMDB reviews: ``{"train": (texts, labels), "test": (texts, labels)}``.

    Args:
      data: a local copy (tar archive or ``aclImdb`` folder or its parent); None reads
        ``$STACKRNN_IMDB_PATH``, and if that is unset too, downloads with tfds.
      data_dir: where tfds keeps the prepared dataset (reused when present);
        default ``$STACKRNN_DATA_DIR`` or ``~/.cache/stackrnn_jax/tfds``.

    Returns:
      Per split, ``texts`` (list of ``num_reviews`` str) and ``labels``
      ``(num_reviews,)`` int32, 1 = positive. The order is tfds' fixed shuffle.

    Raises:
      DataError: missing path, wrong layout, empty split, non-UTF-8 review, or no
        internet and no local copy.
    """
    return {split: (reviews.texts, reviews.labels)
            for split, reviews in load_texts(resolve_source(data), data_dir).items()}
