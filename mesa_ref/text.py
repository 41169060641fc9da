"""[T6] An offline byte- or character-level corpus for language modelling.

The default corpus ships with Python: the text of the standard library's ``pydoc_data.topics`` (the
help topics, joined in sorted key order; about 465,000 characters, 103 distinct characters), so the
language-modelling experiment runs with no download.  ``read_text_file(path)`` reads any UTF-8 file
and rejects a missing, binary (NUL bytes) or undecodable file with a one-line ``CLIError``.

Levels: "char" (vocabulary = the sorted distinct characters of the corpus) or "byte" (vocabulary =
the 256 byte values of the UTF-8 encoding).  ``encode`` / ``decode`` round-trip any text made of the
vocabulary.  ``LMTask`` draws random windows from an array of ids: batch(rng, B) -> (x (B, T) ids,
y (B, T) the next ids).

A training job does not carry token ids: its task (``mesa_ref.tasks.LanguageTask``) names the corpus by
its source and the SHA-256 of its text, and every process rebuilds the ids with ``load_corpus`` (which
encodes each distinct text once per process, so the jobs of one worker share the encoding).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runio import CLIError

__all__ = ["LEVELS", "DEFAULT_SOURCE", "default_text", "read_text_file", "text_sha256", "Corpus", "load_corpus",
           "unigram_entropy", "unigram_cross_entropy", "LMTask"]

LEVELS = ("char", "byte")
DEFAULT_SOURCE = "pydoc_data.topics"


def default_text() -> str:
    """The embedded default corpus: the values of ``pydoc_data.topics.topics`` joined in sorted key order."""
    from pydoc_data.topics import topics
    return "".join(topics[k] for k in sorted(topics))


def text_sha256(text: str) -> str:
    """SHA-256 (hex) of ``text`` encoded as UTF-8: the identity of a corpus in a job's record."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_text_file(path) -> str:
    """Read a UTF-8 text file (a leading BOM is dropped).  Raises CLIError (one line) when the file is
    missing, not a regular file, unreadable, contains NUL bytes (binary) or is not valid UTF-8."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"--text {str(p)!r}: no such file")
    if not p.is_file():
        raise CLIError(f"--text {str(p)!r}: not a regular file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CLIError(f"--text {str(p)!r}: cannot read: {e.strerror or e}") from None
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise CLIError(f"--text {str(p)!r}: not a text file (contains NUL bytes, first at offset {at})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CLIError(f"--text {str(p)!r}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} "
                       f"at offset {e.start})") from None


class Corpus:
    """A text and its integer encoding.  ``Corpus(text, level="char"|"byte")``.

    vocab: the characters (char level) or the byte values 0..255 (byte level); V = len(vocab).
    ids: (len,) int64, the whole text encoded.
    """

    def __init__(self, text: str, level: str = "char", source: str = "<text>"):
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        if level not in LEVELS:
            raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
        self.level, self.source, self.text = level, source, text
        if level == "char":
            self.vocab = sorted(set(text))
            self._stoi = {ch: i for i, ch in enumerate(self.vocab)}
        else:
            self.vocab = list(range(256))
        self.ids = self.encode(text)

    @classmethod
    def default(cls, level: str = "char") -> "Corpus":
        return cls(default_text(), level, source=DEFAULT_SOURCE)

    @classmethod
    def from_file(cls, path, level: str = "char") -> "Corpus":
        return cls(read_text_file(path), level, source=str(path))

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the text (``text_sha256``)."""
        return text_sha256(self.text)

    @property
    def V(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """str -> (len,) int64 ids.  Char level: a character outside the vocabulary is a ValueError."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        if self.level == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        try:
            return np.fromiter((self._stoi[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise ValueError(f"text: character {e.args[0]!r} is not in the corpus vocabulary") from None

    def decode(self, ids) -> str:
        """ids -> str (byte level: invalid UTF-8 sequences, e.g. a cut multi-byte character, become U+FFFD)."""
        ids = np.asarray(ids)
        if ids.size and (ids.dtype.kind not in "iu" or int(ids.min()) < 0 or int(ids.max()) >= self.V):
            raise ValueError(f"ids: expected integers in [0, {self.V})")
        if self.level == "byte":
            return bytes(ids.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
        return "".join(self.vocab[i] for i in ids.reshape(-1).tolist())

    def split(self, heldout_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous split: (train ids, held-out ids), the held-out part being the last ``heldout_frac``."""
        if not 0 < heldout_frac < 1:
            raise ValueError(f"heldout_frac: expected a number in (0, 1), got {heldout_frac!r}")
        cut = int(round(len(self.ids) * (1 - heldout_frac)))
        return self.ids[:cut], self.ids[cut:]


def unigram_entropy(ids, V: int) -> float:
    """Entropy (nats) of the empirical unigram distribution of ``ids``: -sum_c p_c log p_c."""
    counts = np.bincount(np.asarray(ids).reshape(-1), minlength=V).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train_ids, test_ids, V: int, alpha: float = 1.0) -> float:
    """Cross-entropy (nats per token) on ``test_ids`` of the add-``alpha`` unigram model fitted on ``train_ids``."""
    counts = np.bincount(np.asarray(train_ids).reshape(-1), minlength=V).astype(np.float64) + alpha
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(test_ids).reshape(-1)].mean())


_CORPORA: dict = {}        # (source, level, sha256) -> Corpus: the encodings made in this process
_KEEP = 8


def load_corpus(source: str = DEFAULT_SOURCE, level: str = "char", sha256: str | None = None) -> Corpus:
    """The corpus of ``source`` (DEFAULT_SOURCE or a file path) at ``level``.

    The text is read (and hashed) on every call, so an edited file is never served from memory; the
    encoding, the slow part, is made once per process for each distinct text.  With ``sha256``, the text
    must be the one the hash names: a CLIError otherwise (the file was edited, or this Python ships a
    different pydoc text, since the job was defined)."""
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    source = str(source)
    text = default_text() if source == DEFAULT_SOURCE else read_text_file(source)
    digest = text_sha256(text)
    if sha256 is not None and digest != sha256:
        raise CLIError(f"corpus {source!r}: its text has changed since the job was defined "
                       f"(sha256 {digest[:12]}..., the job's {sha256[:12]}...)")
    key = (source, level, digest)
    corpus = _CORPORA.get(key)
    if corpus is None:
        while len(_CORPORA) >= _KEEP:
            _CORPORA.pop(next(iter(_CORPORA)))
        corpus = _CORPORA[key] = Corpus(text, level, source=source)
        corpus.__dict__["sha256"] = digest                 # the cached_property, already computed
    return corpus


@dataclass(frozen=True, eq=False)
class LMTask:
    """[T6] next-token prediction on random windows of ``ids``: batch(rng, B) -> (x, y), both (B, T) int64,
    y[:, t] = ids[start + t + 1].  A window sampler over an array; the job-level task, which names its corpus
    instead of holding it, is ``mesa_ref.tasks.LanguageTask``."""
    ids: np.ndarray
    T: int
    name: str = "train"

    def __post_init__(self):
        if not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T: expected a positive int, got {self.T!r}")
        if len(self.ids) < self.T + 1:
            raise ValueError(f"ids: the {self.name} split has {len(self.ids)} tokens, fewer than T + 1 = {self.T + 1}")

    def batch(self, rng, batch: int, dtype=None):
        starts = rng.integers(0, len(self.ids) - self.T, size=batch)           # (B,)
        idx = starts[:, None] + np.arange(self.T + 1)[None, :]                 # (B, T+1)
        w = self.ids[idx]
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])
