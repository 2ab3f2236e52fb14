"""Word-level vocabulary and encoding with the Keras ``imdb.load_data`` conventions.

Ids: 0 = padding, 1 = start of review, 2 = out of vocabulary, then words by
decreasing train-set frequency from 3 on (ties broken alphabetically); only ids
below ``num_words`` are used, so a vocabulary holds ``num_words - 3`` words.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from pathlib import Path

import numpy as np

PAD_ID, START_ID, OOV_ID = 0, 1, 2
FIRST_WORD_ID = 3
TOKENIZER_VERSION = 1  # bump whenever tokenize() or the id layout changes: keys the caches
PADDING_SIDES = ("pre", "post")

_LETTER = r"[^\W\d_]"  # a Unicode letter
_WORD = re.compile(rf"{_LETTER}+(?:'{_LETTER}+)*")  # apostrophes only inside words: "don't"
_LINE_BREAK = re.compile(r"<br\s*/?>")  # IMDB reviews mark paragraphs with <br />
# Public for tools that tokenize without this package (the export's manifest and loader).
WORD_PATTERN, LINE_BREAK_PATTERN = _WORD.pattern, _LINE_BREAK.pattern
_FILE_FORMAT = "stackrnn_jax.vocabulary"


def tokenize(text: str) -> list[str]:
    """Lower-cased words (runs of letters, inner apostrophes kept), ``<br />`` removed."""
    return _WORD.findall(_LINE_BREAK.sub(" ", text.lower()))


def check_padding_side(name: str, side: str) -> None:
    """Raises ValueError unless ``side`` (the value of argument ``name``) is "pre" or "post"."""
    if side not in PADDING_SIDES:
        raise ValueError(f"{name} must be one of {PADDING_SIDES}, got {side!r}")


def _pad_and_truncate(flat: np.ndarray, full_lengths: np.ndarray, maxlen: int, padding: str,
                      truncating: str) -> tuple[np.ndarray, np.ndarray]:
    """Cuts or zero-pads concatenated sequences to ``maxlen``, as Keras ``pad_sequences`` does.

    ``flat`` holds the sequences back to back, ``full_lengths`` ``(num_sequences,)``
    their lengths. ``truncating="pre"`` drops the start of long sequences, ``"post"``
    their end; ``padding`` puts the zeros before or after the tokens.

    Returns:
      ``ids`` ``(num_sequences, maxlen)`` int32 and ``lengths`` ``(num_sequences,)``
      int32, the number of tokens kept per row.
    """
    lengths = np.minimum(full_lengths, maxlen)
    # One scatter for all rows: token j of row r's kept part moves from
    # flat[source_start[r] + j] to ids[r, target_start[r] + j].
    source_start = np.cumsum(full_lengths) - full_lengths
    if truncating == "pre":
        source_start += full_lengths - lengths
    target_start = maxlen - lengths if padding == "pre" else np.zeros_like(lengths)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids = np.zeros((len(lengths), maxlen), dtype=np.int32)
    ids[rows, target_start[rows] + offset] = flat[source_start[rows] + offset]
    return ids, lengths.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The ``num_words - 3`` (or fewer) most frequent words; ``words[i]`` has id ``i + 3``."""

    num_words: int
    words: tuple[str, ...] = dataclasses.field(repr=False)
    _ids: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.num_words <= FIRST_WORD_ID:
            raise ValueError(f"num_words must be > {FIRST_WORD_ID} (ids 0-2 are reserved), "
                             f"got {self.num_words}")
        if len(self.words) > self.num_words - FIRST_WORD_ID:
            raise ValueError(f"{len(self.words)} words do not fit below num_words={self.num_words}")
        ids = {word: FIRST_WORD_ID + index for index, word in enumerate(self.words)}
        object.__setattr__(self, "_ids", ids)

    def __contains__(self, word: str) -> bool:
        """Whether ``word`` has an id of its own (else it is encoded as unknown)."""
        return word in self._ids

    @classmethod
    def build(cls, texts: Sequence[str], num_words: int = 10_000) -> Vocabulary:
        """The vocabulary of ``texts`` (the train split only, to keep test words unseen)."""
        return cls.from_tokens(map(tokenize, texts), num_words)

    @classmethod
    def from_tokens(cls, token_lists: Iterable[list[str]], num_words: int = 10_000) -> Vocabulary:
        """Like :meth:`build`, from already tokenized texts."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        kept = ranked[:max(num_words - FIRST_WORD_ID, 0)]
        return cls(num_words, tuple(word for word, _ in kept))

    def encode(self, texts: Sequence[str], maxlen: int = 500, padding: str = "pre",
               truncating: str = "pre") -> tuple[np.ndarray, np.ndarray]:
        """Ids ``(num_texts, maxlen)`` int32 and lengths ``(num_texts,)`` int32 of ``texts``.

        Each text becomes ``[1, id(word), ...]`` (2 for unknown words), then is cut or
        padded to ``maxlen`` on the given sides as Keras ``pad_sequences`` does.
        Lengths count the non-padding ids, so they are >= 1 even for an empty text.
        """
        return self.encode_tokens([tokenize(text) for text in texts], maxlen, padding, truncating)

    def encode_tokens(self, token_lists: Sequence[list[str]], maxlen: int = 500,
                      padding: str = "pre",
                      truncating: str = "pre") -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`encode`, from already tokenized texts."""
        check_padding_side("padding", padding)
        check_padding_side("truncating", truncating)
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        word_counts = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        # All words of all texts in one C-level pass, then the start id before each text.
        lookups = map(self._ids.get, chain.from_iterable(token_lists), repeat(OOV_ID))
        word_ids = np.fromiter(lookups, dtype=np.int32, count=int(word_counts.sum()))
        flat = np.insert(word_ids, np.cumsum(word_counts) - word_counts, START_ID)
        return _pad_and_truncate(flat, word_counts + 1, maxlen, padding, truncating)

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ``ids`` joined by spaces; padding and start dropped, unknown words as
        ``<oov>``."""
        words = []
        for token in np.asarray(ids, dtype=np.int64).ravel():
            if token >= FIRST_WORD_ID:
                words.append(self.words[token - FIRST_WORD_ID])
            elif token == OOV_ID:
                words.append("<oov>")
        return " ".join(words)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary as JSON, atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FILE_FORMAT, "tokenizer_version": TOKENIZER_VERSION,
                   "num_words": self.num_words, "words": list(self.words)}
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a vocabulary written by :meth:`save` (with the same tokenizer version)."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("format") != _FILE_FORMAT:
            raise ValueError(f"{path}: not a stackrnn_jax vocabulary file")
        if payload["tokenizer_version"] != TOKENIZER_VERSION:
            raise ValueError(f"{path}: written by tokenizer version "
                             f"{payload['tokenizer_version']}, "
                             f"this is version {TOKENIZER_VERSION}")
        return cls(payload["num_words"], tuple(payload["words"]))
