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


# ---------------------------------------------------------------------------------------------- the job task
def _two_part_text(tmp_path, n=2000):
    """A file whose first 90% uses only the letters a-m and whose last 10% only n-z: a window's letters say
    which split it came from."""
    rng = np.random.default_rng(0)
    cut = int(round(n * 0.9))
    text = "".join(rng.choice(list("abcdefghijklm"), cut)) + "".join(rng.choice(list("nopqrstuvwxyz"), n - cut))
    path = tmp_path / "two_part.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_language_task_round_trips_and_draws_from_its_splits(tmp_path, monkeypatch):
    import json

    from mesa_ref.tasks import LanguageTask, task_from_dict
    path = _two_part_text(tmp_path)
    monkeypatch.chdir(tmp_path)
    task = LanguageTask(source="two_part.txt", T=12)               # a relative path is recorded absolute
    rec = json.loads(json.dumps(task.to_dict()))
    assert rec["name"] == "language_modelling" and rec["source"] == str(path.resolve())
    assert rec["sha256"] == Corpus.from_file(path).sha256
    again = task_from_dict(rec)
    assert again == task and again.to_dict() == rec
    c = task.corpus()
    held_letters = {c.vocab.index(ch) for ch in "nopqrstuvwxyz"}
    for draw in ("batch", "test_batch"):
        x1, y1 = getattr(task, draw)(np.random.default_rng(5), 64)
        x2, y2 = getattr(again, draw)(np.random.default_rng(5), 64)
        assert x1.shape == y1.shape == (64, 12) and x1.dtype == np.int64
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])
        in_held = np.isin(np.concatenate([x1, y1[:, -1:]], axis=1), list(held_letters))
        assert (in_held.all() if draw == "test_batch" else not in_held.any()), draw
    xh, _ = LanguageTask(source=str(path), T=12, split="heldout").batch(np.random.default_rng(5), 8)
    assert np.isin(xh, list(held_letters)).all()


def test_language_task_names_its_text(tmp_path):
    from mesa_lab.jobs import Job
    from mesa_ref.config import ModelConfig
    from mesa_ref.tasks import LanguageTask, task_from_dict
    from mesa_ref.train import TrainConfig
    path = _two_part_text(tmp_path)
    task = LanguageTask(source=str(path), T=8)
    rec = task.to_dict()
    mcfg = ModelConfig(layers=("linear",), heads=1, width=8, key_size=4, input="tokens", input_dim=26,
                       output_dim=26, clip=None)
    key = Job(mcfg, task, TrainConfig(steps=1)).key
    path.write_text(path.read_text()[::-1], encoding="utf-8")      # same letters, same length, another text
    with pytest.raises(CLIError, match="changed"):
        task_from_dict(rec)
    edited = LanguageTask(source=str(path), T=8)
    assert edited.sha256 != task.sha256 and Job(mcfg, edited, TrainConfig(steps=1)).key != key
    default = LanguageTask(T=8)
    assert default.source == "pydoc_data.topics" and default.sha256 == Corpus.default().sha256
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 5, encoding="utf-8")
    with pytest.raises(CLIError, match="too short"):
        LanguageTask(source=str(short), T=8)                       # 5 held-out tokens < T + 1
    with pytest.raises(CLIError, match="no such file"):
        LanguageTask(source=str(tmp_path / "missing.txt"), T=8)
    with pytest.raises(ValueError, match="split"):
        LanguageTask(T=8, split="test")


def test_trainer_takes_its_test_set_from_test_batch(tmp_path):
    """mesa_ref.train builds the fixed test batches with task.test_batch where the task has one: the logged
    initial test loss is the loss on held-out windows, not on training windows drawn with the same stream."""
    from mesa_ref.config import ModelConfig
    from mesa_ref.model import Transformer
    from mesa_ref.tasks import LanguageTask
    from mesa_ref.train import TrainConfig, train
    task = LanguageTask(source=str(_two_part_text(tmp_path)), T=8)
    V = task.vocab_size
    model = Transformer(ModelConfig(layers=("softmax",), heads=1, width=8, key_size=4, input="tokens",
                                    input_dim=V, output_dim=V, clip=None, pos_enc=True, init_std=0.5))
    tcfg = TrainConfig(steps=1, batch=4, test_batches=2, eval_every=1, seed=3)
    params = model.init(tcfg.seed)

    def loss_on(draw):
        rng = np.random.default_rng([tcfg.seed, 2])                # the trainer's test stream
        return float(np.mean([model.loss(params, *draw(rng, tcfg.batch)) for _ in range(tcfg.test_batches)]))

    res = train(model, task, tcfg, progress=False)
    held, trained_on = loss_on(task.test_batch), loss_on(task.batch)
    assert abs(held - trained_on) > 1e-3                            # the two sets tell apart
    assert res.metrics["test_loss"][0] == pytest.approx(held, rel=1e-6)


def test_token_loss_is_the_cross_entropy_the_figure_reports():
    """Model.loss on token ids = the mean of fig8's per-token -log softmax(logits)[y] (float64, computed apart),
    and at a small init the logits are near zero, so it is near log V."""
    from mesa_ref.config import ModelConfig
    from mesa_lab.experiments.language import token_losses
    from mesa_ref.model import Transformer
    from mesa_ref.tasks import LanguageTask
    task = LanguageTask(T=16)
    V = task.vocab_size
    x, y = task.test_batch(np.random.default_rng(0), 6)
    for std, layers in ((0.02, ("mesa", "softmax")), (0.3, ("linear", "mesa"))):
        model = Transformer(ModelConfig(layers=layers, heads=2, width=16, key_size=8, input="tokens", input_dim=V,
                                        output_dim=V, clip=None, pos_enc=True, layernorm=True, init_std=std))
        params = model.init(1)
        per_token = token_losses(model, params, x, y, chunk=4)      # (6, 16)
        assert per_token.shape == (6, 16) and (per_token > 0).all()
        assert model.loss(params, x, y) == pytest.approx(per_token.mean(), rel=1e-5)
        if std == 0.02:
            assert per_token.mean() == pytest.approx(np.log(V), abs=0.05)
        else:
            assert abs(per_token.mean() - np.log(V)) > 0.05        # a real check, not a constant
