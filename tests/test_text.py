"""[T6] the offline corpus reader: encode/decode round trips, splits, windows, entropies, and one-line
errors for a missing or non-text file."""
import numpy as np
import pytest

from mesa_ref.runio import CLIError
from mesa_ref.text import Corpus, LMTask, default_text, read_text_file, unigram_cross_entropy, unigram_entropy


def test_default_corpus_is_the_pydoc_topics_text():
    from pydoc_data.topics import topics
    text = default_text()
    assert len(text) == sum(len(v) for v in topics.values()) > 100_000
    c = Corpus.default()
    assert c.V == len(set(text)) and c.vocab == sorted(c.vocab)
    assert c.ids.dtype == np.int64 and len(c.ids) == len(text)
    assert c.decode(c.ids[:5000]) == text[:5000]


@pytest.mark.parametrize("level", ["char", "byte"])
def test_round_trip(level):
    text = "Mesa-optimisation: ∑ y xᵀ (X Xᵀ + λI)⁻¹ — naïve café\n\ttabs and\nnewlines"
    c = Corpus(text, level)
    assert c.decode(c.encode(text)) == text
    assert c.decode(c.ids) == text
    if level == "byte":
        assert c.V == 256 and len(c.ids) == len(text.encode("utf-8"))
    else:
        assert c.V == len(set(text)) and len(c.ids) == len(text)
        assert c.decode(c.encode("naïve")) == "naïve"


def test_unknown_character_and_bad_ids():
    c = Corpus("abc")
    with pytest.raises(ValueError, match="text"):
        c.encode("abz")
    with pytest.raises(ValueError, match="ids"):
        c.decode(np.array([0, 3]))
    with pytest.raises(ValueError, match="level"):
        Corpus("abc", "word")


def test_file_round_trip_and_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("hello, wörld\n", encoding="utf-8")
    c = Corpus.from_file(good)
    assert c.decode(c.ids) == "hello, wörld\n" and c.source == str(good)
    with pytest.raises(CLIError, match="no such file"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(CLIError, match="not a regular file"):
        read_text_file(tmp_path)
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(CLIError, match="NUL"):
        read_text_file(binary)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CLIError, match="not UTF-8") as e:
        read_text_file(latin)
    assert "\n" not in str(e.value)


def test_split_windows_and_entropies():
    text = "abcab" * 50
    c = Corpus(text)
    tr, te = c.split(0.2)
    assert len(tr) == 200 and len(te) == 50 and np.array_equal(np.concatenate([tr, te]), c.ids)
    task = LMTask(tr, 7)
    x, y = task.batch(np.random.default_rng(0), 5)
    assert x.shape == y.shape == (5, 7) and x.dtype.kind == "i"
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # every window is a contiguous piece of the training ids
    s = "".join(c.decode(tr))
    for row_x, row_y in zip(x, y):
        assert c.decode(np.concatenate([row_x, row_y[-1:]])) in s
    with pytest.raises(ValueError, match="ids"):
        LMTask(tr[:5], 7)
    u = np.arange(8).repeat(3)
    assert unigram_entropy(u, 8) == pytest.approx(np.log(8))
    p = np.array([2, 2, 1]) / 5
    assert unigram_entropy(c.ids, c.V) == pytest.approx(-(p * np.log(p)).sum())
    # add-one unigram cross-entropy of a split on itself is at least its entropy
    assert unigram_cross_entropy(c.ids, c.ids, c.V) >= unigram_entropy(c.ids, c.V) - 1e-12
