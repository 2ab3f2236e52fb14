"""``stackrnn predict --explain``: the page's content, read back with an HTML parser, and
the running probabilities against ``stackrnn predict``."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from stackrnn_jax.cli import main
from stackrnn_jax.explain import explain
from stackrnn_jax.predict import load_run, predict_proba
from tests.helpers import make_run

REVIEWS = ["A great film, but the zzz plot was boring", "wonderful qqq"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Page(HTMLParser):
    """Collects the sections, token spans (text and attributes), polylines and images."""

    def __init__(self):
        super().__init__()
        self.sections, self.external, self._token = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith("data:"):
                self.external.append(attrs[name])
        if tag == "section":
            self.sections.append({"tokens": [], "polylines": [], "images": []})
        elif tag == "span" and "token" in attrs.get("class", "").split():
            self._token = {"classes": attrs["class"].split(), "p": float(attrs["data-p"]),
                           "title": attrs["title"], "text": ""}
            self.sections[-1]["tokens"].append(self._token)
        elif tag == "polyline":
            self.sections[-1]["polylines"].append(attrs["points"].split())
        elif tag == "img":
            self.sections[-1]["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "span":
            self._token = None

    def handle_data(self, data):
        if self._token is not None:
            self._token["text"] += data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("explain") / "run", layers=2)


def test_page_shows_each_token_its_probability_and_every_layer(workdir, tmp_path, capsys):
    page = tmp_path / "why.html"
    assert main(["predict", "--workdir", str(workdir), "--explain", str(page), *REVIEWS]) == 0
    printed = [float(line.split("\t")[0]) for line in capsys.readouterr().out.splitlines()]
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.external == []          # self-contained: no file or URL is fetched
    assert len(parser.sections) == len(REVIEWS)
    run = load_run(workdir)
    for number, (text, section) in enumerate(zip(REVIEWS, parser.sections), start=1):
        expected = explain(run, text)
        tokens = section["tokens"]
        assert [t["text"] for t in tokens] == expected.tokens
        np.testing.assert_allclose([t["p"] for t in tokens], expected.probabilities, atol=1e-6)
        # The curve ends at predict's probability (printed to 4 decimals; the two are
        # computed by different programs, so a value on a rounding boundary may print
        # either way).
        assert abs(tokens[-1]["p"] - printed[number - 1]) <= 0.5e-4 + 1e-6
        marked = [t["text"] for t in tokens if "oov" in t["classes"]]
        assert marked == [w for w, oov in zip(expected.tokens, expected.oov) if oov]
        assert all("not in the vocabulary" in t["title"] for t in tokens if "oov" in t["classes"])
        assert [len(p) for p in section["polylines"]] == [len(tokens)]
        (image,) = section["images"]
        png = base64.b64decode(image.removeprefix("data:image/png;base64,"))
        assert png == (tmp_path / f"why-{number}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert {"qqq", "zzz"} <= {t["text"] for s in parser.sections for t in s["tokens"]
                              if "oov" in t["classes"]}


@pytest.mark.parametrize("fields", [
    {"mask": True, "padding": "post", "cell": "lstm"},
    {"mask": False, "padding": "pre", "cell": "gru"},
    {"mask": True, "maxlen": 5},    # truncated: the first tokens are cut, as predict cuts them
    {"mask": False, "bidirectional": True},
], ids=["masked-post-lstm", "unmasked-pre-gru", "truncated", "bidirectional"])
def test_running_probability_ends_at_the_prediction(tmp_path, fields):
    run = load_run(make_run(tmp_path / "run", **fields))
    for text in REVIEWS:
        e = explain(run, text)
        assert len(e.tokens) == len(e.probabilities) == len(e.oov)
        assert all(h.shape[0] == len(e.tokens) for h in e.hidden) and len(e.hidden) == 2
        predicted = predict_proba(run, [text])[0]
        assert abs(e.final - predicted) < 1e-6
        if not run.config.bidirectional:  # a backward half has not read the review yet there
            assert abs(e.probabilities[-1] - predicted) < 1e-6
    if run.config.maxlen == 5:
        assert explain(run, REVIEWS[0]).tokens == ["the", "zzz", "plot", "was", "boring"]


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, BROWSERS)), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium/Chrome installed")
def test_page_renders_in_headless_chromium(workdir, tmp_path):
    page, shot = tmp_path / "why.html", tmp_path / "shot.png"
    assert main(["predict", "--workdir", str(workdir), "--explain", str(page), REVIEWS[0]]) == 0
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1000,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1000)
    # Rendered, not blank: the page's red/green token backgrounds are on screen.
    rgb = pixels[..., :3].reshape(-1, 3)
    assert np.any((rgb[:, 1] > rgb[:, 0] + 0.15)) and np.any((rgb[:, 0] > rgb[:, 1] + 0.15))


def test_explain_into_a_folder_is_one_error_line(workdir, tmp_path, capsys):
    (tmp_path / "page.html").mkdir()
    argv = ["predict", "--workdir", str(workdir), "--explain", str(tmp_path / "page.html"),
            REVIEWS[1]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "page.html" in err, err
