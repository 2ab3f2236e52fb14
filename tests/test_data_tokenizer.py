"""Tokenizer, vocabulary (Keras imdb id conventions) and padding/truncation."""

import json

import numpy as np
import pytest

from stackrnn_jax.data import Vocabulary, tokenize
from stackrnn_jax.data.tokenizer import OOV_ID, PAD_ID, START_ID

CORPUS = ["the cat sat", "the dog sat", "the cat ran", "a bird"]  # the:3, cat:2, sat:2, then 1s


def keras_pad(sequences, maxlen, padding, truncating):
    """Reference: Keras ``pad_sequences`` semantics, one row at a time."""
    out = np.zeros((len(sequences), maxlen), dtype=np.int32)
    for row, sequence in enumerate(sequences):
        kept = sequence[-maxlen:] if truncating == "pre" else sequence[:maxlen]
        if kept:
            if padding == "pre":
                out[row, -len(kept):] = kept
            else:
                out[row, : len(kept)] = kept
    return out


def test_tokenize_words():
    assert tokenize("Don't <br /><br />STOP!Now 42 times, 'quoted' rock'n'roll") == [
        "don't", "stop", "now", "times", "quoted", "rock'n'roll",
    ]
    assert tokenize("Amélie<br/>naïve") == ["amélie", "naïve"]
    assert tokenize("end.<br />Next") == ["end", "next"]  # <br /> separates words
    assert tokenize("") == [] and tokenize("123 ...") == []


def test_build_ranks_by_frequency_then_alphabetically():
    vocab = Vocabulary.build(CORPUS, num_words=100)
    assert vocab.words[:3] == ("the", "cat", "sat")  # 'cat' and 'sat' tie at 2: alphabetical
    assert vocab.words[3:] == ("a", "bird", "dog", "ran")
    ids, _ = vocab.encode(["the cat"], maxlen=3)
    assert ids.tolist() == [[START_ID, 3, 4]]  # the most frequent word gets id 3


def test_num_words_counts_reserved_ids():
    vocab = Vocabulary.build(CORPUS, num_words=5)
    assert vocab.words == ("the", "cat")
    ids, _ = vocab.encode(["the cat sat"], maxlen=4, padding="post")
    assert ids.tolist() == [[START_ID, 3, 4, OOV_ID]] and ids.max() < 5
    with pytest.raises(ValueError, match="num_words must be > 3"):
        Vocabulary.build(CORPUS, num_words=3)


def test_build_is_deterministic_under_reordering():
    assert Vocabulary.build(CORPUS, 6) == Vocabulary.build(CORPUS[::-1], 6)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_padding_and_truncation_match_keras(padding, truncating):
    rng = np.random.default_rng(0)
    words = [f"w{chr(97 + i)}" for i in range(20)]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(50)]
    vocab = Vocabulary.build(texts, num_words=12)
    ids, lengths = vocab.encode(texts, maxlen=7, padding=padding, truncating=truncating)
    word_ids = {word: 3 + index for index, word in enumerate(vocab.words)}
    sequences = [[START_ID] + [word_ids.get(word, OOV_ID) for word in tokenize(text)]
                 for text in texts]
    assert ids.dtype == np.int32 and lengths.dtype == np.int32 and ids.shape == (50, 7)
    assert np.array_equal(ids, keras_pad(sequences, 7, padding, truncating))
    assert lengths.tolist() == [min(len(sequence), 7) for sequence in sequences]
    assert np.array_equal(lengths, (ids != PAD_ID).sum(axis=1))


def test_lengths_and_sides_on_a_short_and_a_long_text():
    vocab = Vocabulary.build(["a b c d e"], num_words=10)  # a..e -> 3..7
    texts = ["a b", "a b c d e", ""]
    pre, pre_lengths = vocab.encode(texts, maxlen=4, padding="pre", truncating="pre")
    assert pre.tolist() == [[0, 1, 3, 4], [4, 5, 6, 7], [0, 0, 0, 1]]
    post, post_lengths = vocab.encode(texts, maxlen=4, padding="post", truncating="post")
    assert post.tolist() == [[1, 3, 4, 0], [1, 3, 4, 5], [1, 0, 0, 0]]
    assert pre_lengths.tolist() == post_lengths.tolist() == [3, 4, 1]  # "" keeps its start id


def test_encode_rejects_bad_arguments():
    vocab = Vocabulary.build(CORPUS)
    with pytest.raises(ValueError, match="padding must be one of"):
        vocab.encode(CORPUS, padding="both")
    with pytest.raises(ValueError, match="truncating must be one of"):
        vocab.encode(CORPUS, truncating="middle")
    with pytest.raises(ValueError, match="maxlen must be >= 1"):
        vocab.encode(CORPUS, maxlen=0)


def test_decode_round_trip():
    vocab = Vocabulary.build(CORPUS)
    text = "The cat<br />sat, the DOG ran!"
    ids, _ = vocab.encode([text], maxlen=10)
    assert vocab.decode(ids[0]) == " ".join(tokenize(text)) == "the cat sat the dog ran"
    assert vocab.decode(vocab.encode(["the unicorn"], maxlen=5)[0]) == "the <oov>"


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(CORPUS + ["café naïve"], num_words=8)
    path = tmp_path / "nested" / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.num_words == 8
    assert np.array_equal(loaded.encode(CORPUS, maxlen=5)[0], vocab.encode(CORPUS, maxlen=5)[0])
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary file left

    vocab.save(path)  # overwrites in place
    assert Vocabulary.load(path) == vocab


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"words": ["a"]}))
    with pytest.raises(ValueError, match="not a stackrnn_jax vocabulary"):
        Vocabulary.load(path)
    Vocabulary.build(CORPUS).save(path)
    payload = json.loads(path.read_text())
    path.write_text(json.dumps(payload | {"tokenizer_version": 0}))
    with pytest.raises(ValueError, match="tokenizer version 0"):
        Vocabulary.load(path)
