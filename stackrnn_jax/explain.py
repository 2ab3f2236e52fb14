"""``stackrnn predict --explain OUT.html``: how a prediction forms, token by token.

``explain(run, text)`` runs the classifier's stack one layer at a time with
``return_sequences``, keeping every layer's outputs, and applies the Dense head after
every token: the probability the model would give if the review ended there. (A
bidirectional layer's backward half has read the whole review at every token, so its
curve is not a running one.) The steps run exactly as ``stackrnn predict`` runs them —
the same ids, padding, truncation and masking — so after the last token the curve
reaches the prediction (for a model trained without masking and padded after the text,
the padding steps still move it; ``final`` is then the prediction).

``write_page`` renders explanations as one self-contained HTML page: each review with
its tokens coloured by the running probability (red 0, white 0.5, green 1; unknown
words underlined and marked "not in the vocabulary"), the probability curve as inline
SVG, and a PNG of the curve and one heat map per layer of its hidden units over the
tokens, embedded as base64 and also written beside the page.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stackrnn_jax import run_dir
from stackrnn_jax.data.tokenizer import OOV_ID, tokenize
from stackrnn_jax.stack import stacked_rnn

START = "<start>"
CURVE_WIDTH, CURVE_HEIGHT = 800, 160   # the inline SVG, pixels
NEGATIVE, POSITIVE = (215, 48, 39), (26, 152, 80)   # the colours of P = 0 and P = 1


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One review, read token by token (``n`` tokens: the start marker, then the words
    the model saw after truncation to ``maxlen``)."""

    text: str
    tokens: list[str]            # (n,) "<start>", then the review's words
    oov: np.ndarray              # (n,) bool: the word is not in the vocabulary
    probabilities: np.ndarray    # (n,) P(positive) after each token
    hidden: list[np.ndarray]     # per layer (n, width): the layer's outputs at each token
    final: float                 # the model's P(positive) for the review (= predict)


def explain(run, text: str) -> Explanation:
    """``run`` (``predict.Run``) reading ``text``: see the module docstring."""
    from stackrnn_jax.predict import check_texts
    from stackrnn_jax.train import model_logits

    (text,) = check_texts([text])
    config, model = run.config, run.model
    if config.members > 1:
        raise ValueError(f"--explain reads one model's outputs step by step; this run is an "
                         f"ensemble of {config.members} (predict without --explain)")
    ids, lengths = run.vocab.encode([text], config.maxlen, config.padding, config.truncating)
    count = int(lengths[0])
    words = [START, *tokenize(text)]
    words = words[-count:] if config.truncating == "pre" else words[:count]
    real = slice(config.maxlen - count, None) if config.padding == "pre" else slice(0, count)

    hidden = _layer_outputs(model, ids, lengths if config.mask else None, config.padding)
    logits = model.head(hidden[-1].astype(jnp.float32))[0, :, 0]
    final = jax.nn.sigmoid(model_logits(model, {"ids": ids, "lengths": lengths}, config))
    return Explanation(text=text, tokens=words, oov=ids[0, real] == OOV_ID,
                       probabilities=np.asarray(jax.nn.sigmoid(logits))[real],
                       hidden=[np.asarray(h[0], np.float32)[real] for h in hidden],
                       final=float(final[0]))


def _layer_outputs(model, ids, lengths, padding: str) -> list[jax.Array]:
    """Each RNN layer's outputs ``(1, time, width)`` for ``ids (1, time)``; eval mode."""
    rnn = model.rnn
    x = model.embed(ids)
    outputs = []
    for layer in rnn.params():
        x = stacked_rnn([layer], x, cell=rnn.cell, lengths=lengths, padding=padding,
                        return_sequences=True, strategy=rnn.strategy, unroll=rnn.unroll,
                        merge=rnn.merge, activation=rnn.activation,
                        compute_dtype=rnn.compute_dtype)
        outputs.append(x)
    return outputs


def write_page(explanations: Sequence[Explanation], path: str | Path, *,
               title: str = "How the prediction forms") -> list[Path]:
    """Write the HTML page ``path`` and one PNG per review beside it (``OUT.png``, or
    ``OUT-1.png``, ``OUT-2.png``, ... for several), atomically; returns the files."""
    path = Path(path)
    pngs = [path.with_suffix(".png") if len(explanations) == 1
            else path.with_name(f"{path.stem}-{i}.png") for i in range(1, len(explanations) + 1)]
    images = [figure_png(e) for e in explanations]
    sections = [_section(i, e, image) for i, (e, image) in
                enumerate(zip(explanations, images), start=1)]
    for png, image in zip(pngs, images):
        run_dir.write_bytes(png, image)
    run_dir.write_text(path, _PAGE.format(title=html.escape(title), body="\n".join(sections)))
    return [path, *pngs]


def colour(probability: float) -> str:
    """CSS colour of a probability: red (0) through white (0.5) to green (1)."""
    toward = POSITIVE if probability >= 0.5 else NEGATIVE
    weight = min(abs(probability - 0.5) * 2, 1.0)
    rgb = (round(255 + (c - 255) * weight) for c in toward)
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def figure_png(explanation: Explanation) -> bytes:
    """PNG: the probability curve over the tokens, then one heat map per layer."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    n, layers = len(explanation.tokens), len(explanation.hidden)
    heights = [1.2] + [max(1.0, h.shape[1] / 32) for h in explanation.hidden]
    figure, axes = plt.subplots(1 + layers, 1, figsize=(max(8, n * 0.18), 2 + 1.6 * layers),
                                sharex=True, constrained_layout=True,
                                gridspec_kw={"height_ratios": heights})
    curve = axes[0]
    curve.plot(range(n), explanation.probabilities, "-", color="#333333")
    curve.scatter(range(n), explanation.probabilities, c=explanation.probabilities,
                  cmap="RdYlGn", vmin=0, vmax=1, s=12, zorder=3)
    curve.axhline(0.5, color="#999999", lw=0.8, ls="--")
    curve.set(ylim=(0, 1), ylabel="P(positive)",
              title=f"P(positive) after each token (final {explanation.final:.4f})")
    for index, (axis, hidden) in enumerate(zip(axes[1:], explanation.hidden), start=1):
        scale = float(np.abs(hidden).max()) or 1.0
        image = axis.imshow(hidden.T, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale,
                            interpolation="nearest")
        axis.set(ylabel=f"layer {index}\nunit")
        figure.colorbar(image, ax=axis, pad=0.01)
    step = max(1, n // 80)  # at most ~80 labels
    axes[-1].set_xticks(range(0, n, step))
    axes[-1].set_xticklabels(explanation.tokens[::step], rotation=90, fontsize=7)
    for tick, oov in zip(axes[-1].get_xticklabels(), explanation.oov[::step]):
        if oov:
            tick.set_color("#b35900")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _section(number: int, explanation: Explanation, image: bytes) -> str:
    e = explanation
    label = "positive" if e.final >= 0.5 else "negative"
    tokens = " ".join(
        f'<span class="token{" oov" if oov else ""}" data-p="{p:.6f}" '
        f'style="background:{colour(p)}" title="P(positive) after this token: {p:.4f}'
        f'{" (not in the vocabulary)" if oov else ""}">{html.escape(token)}</span>'
        for token, p, oov in zip(e.tokens, e.probabilities, e.oov))
    unknown = int(e.oov.sum())
    return _SECTION.format(
        number=number, final=e.final, label=label, tokens=tokens,
        unknown=f"{unknown} of {len(e.tokens) - 1} words not in the vocabulary (underlined)",
        curve=_curve_svg(e.probabilities), png=base64.b64encode(image).decode("ascii"),
        layers=len(e.hidden))


def _curve_svg(probabilities: np.ndarray) -> str:
    n = len(probabilities)
    xs = np.linspace(0, CURVE_WIDTH, n) if n > 1 else np.array([CURVE_WIDTH / 2])
    points = " ".join(f"{x:.1f},{(1 - p) * CURVE_HEIGHT:.1f}" for x, p in zip(xs, probabilities))
    middle = CURVE_HEIGHT / 2
    return (f'<svg class="curve" width="{CURVE_WIDTH}" height="{CURVE_HEIGHT}" '
            f'viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" role="img" '
            f'aria-label="P(positive) after each token">'
            f'<line x1="0" y1="{middle}" x2="{CURVE_WIDTH}" y2="{middle}" class="half"/>'
            f'<polyline class="probability" points="{points}"/></svg>')


_SECTION = """<section class="review" id="review-{number}">
<h2>Review {number}: P(positive) = {final:.4f} ({label})</h2>
<p class="tokens">{tokens}</p>
<p class="note">{unknown}. Hover a token for the probability after it.</p>
<h3>P(positive) after each token</h3>
{curve}
<h3>The curve and each layer's hidden units over the tokens ({layers} layer(s); blue
negative, red positive), also saved as PNG beside this page</h3>
<img class="layers" alt="P(positive) curve and one heat map per layer"
 src="data:image/png;base64,{png}">
</section>"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; color: #222; }}
.tokens {{ line-height: 2; font-size: 15px; }}
.token {{ padding: 2px 3px; border-radius: 3px; }}
.oov {{ text-decoration: underline dotted #b35900 2px; font-style: italic; }}
.note {{ color: #666; font-size: 13px; }}
svg.curve {{ border: 1px solid #ddd; background: #fafafa; }}
svg.curve .half {{ stroke: #bbb; stroke-dasharray: 4 4; }}
svg.curve .probability {{ fill: none; stroke: #333; stroke-width: 2; }}
img.layers {{ max-width: 100%; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="note">Each token is coloured by P(positive) had the review ended there:
red 0, white 0.5, green 1.</p>
{body}
</body></html>
"""
