"""The evaluate stage's samples: for each prefix the seeds' greedy decoding beside the default
decoding (conf's `generate.*`), measured as lyrics against the human test text."""

from __future__ import annotations

import html
import statistics
from typing import Any

import torch

from lyricist.data.vocab import Vocab
from lyricist.evaluation.lyrics import COPY_N, human_pieces, lyric_metrics, ngram_set
from lyricist.evaluation.metrics import LyricMetrics, LyricsResult
from lyricist.decoding import generate
from lyricist.settings import Decoding
from lyricist.models import RecurrentLM

ROWS = [("copy rate", "copy_rate", f"share of character {COPY_N}-grams found verbatim in the train text"),
        ("repeated lines", "repeated_lines", "share of lines equal to an earlier line of the sample"),
        ("distinct-1", "distinct_1", "distinct characters / characters"),
        ("distinct-2", "distinct_2", "distinct character bigrams / bigrams"),
        ("line length, mean", "line_length_mean", "characters"),
        ("line length, std", "line_length_std", "characters")]


def describe(decoding: dict[str, Any]) -> str:
    """The decoding options in words, only those that act: 'sample, temperature 0.8, top-p 0.95'."""
    if decoding.get("strategy", "greedy") == "greedy":
        parts = ["greedy"]
    else:
        parts = ["sample", f"temperature {decoding.get('temperature', 1.0):g}"]
        parts += [f"top-k {decoding['top_k']}"] if decoding.get("top_k") else []
        parts += [f"top-p {decoding['top_p']:g}"] if decoding.get("top_p") is not None else []
    if decoding.get("repetition_penalty", 1.0) != 1:
        parts.append(f"repetition penalty {decoding['repetition_penalty']:g} over "
                     f"{decoding.get('repetition_window', 20)} tokens")
    if decoding.get("no_repeat_ngram"):
        parts.append(f"no repeated {decoding['no_repeat_ngram']}-gram")
    if decoding.get("strategy") == "sample" and decoding.get("seed") is not None:
        parts.append(f"seed {decoding['seed']} (+1 per prefix)")
    return ", ".join(parts)


def _table(columns: dict[str, LyricMetrics], notes: bool = False) -> list[str]:
    """A markdown table: one row per lyric metric, one column per set of texts."""
    lines = ["| | " + " | ".join(columns) + (" | what |" if notes else " |"),
             "|---|" + "---|" * (len(columns) + notes)]
    for label, field, note in ROWS:
        cells = [f"{getattr(m, field):.3f}" if "length" not in field else f"{getattr(m, field):.1f}"
                 for m in columns.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {note} |" if notes else " |"))
    return lines


def _side_by_side(texts: dict[str, str]) -> list[str]:
    """The texts in the columns of an HTML table (markdown tables hold no line breaks)."""
    heads = "".join(f"<th>{html.escape(name)}</th>" for name in texts)
    cells = "".join(f"<td valign=\"top\"><pre>\n{html.escape(text)}\n</pre></td>" for text in texts.values())
    return ["<table>", f"<tr>{heads}</tr>", f"<tr>{cells}</tr>", "</table>"]


def sample_lyrics(model: RecurrentLM, vocab: Vocab, prefixes: list[str], decoding: Decoding,
                  train_ids: torch.Tensor, test_ids: torch.Tensor | None) -> tuple[LyricsResult, str]:
    """The default decoding's lyric metrics (all prefixes together) and the human test text's,
    and a markdown page: per prefix the greedy and the default sample side by side with their
    metrics."""
    reference = ngram_set(vocab.decode(train_ids, unk="\ufffd"))  # one character per <unk>
    num_chars = decoding.num_chars
    greedy = [generate(model, vocab, p, Decoding(num_chars=num_chars), allow_unknown=True) for p in prefixes]
    default = [generate(model, vocab, p, decoding, index=i, allow_unknown=True) for i, p in enumerate(prefixes)]
    samples = lyric_metrics(default, reference)
    human = None
    if test_ids is not None and len(test_ids):
        # Pieces as long as the samples, so that line counts and distinct-n compare.
        length = round(statistics.fmean(len(text) for text in default)) if default else num_chars
        human = lyric_metrics(human_pieces(vocab.decode(test_ids, unk="\ufffd"), length), reference)
    name, unit = "default decoding", "characters" if vocab.tokenizer == "char" else "words"
    overall = {"greedy": lyric_metrics(greedy, reference), name: samples}
    if human:
        overall["human test text"] = human
    lines = [f"# Samples ({num_chars} {unit} after the prefix)", "",
             f"Each prefix's greedy decoding (the seeds' argmax) beside the default decoding (`generate.*`: "
             f"{describe(decoding.model_dump())}). All prefixes together, and the human test text cut into pieces as "
             "long as a sample:",
             "", *_table(overall, notes=True), ""]
    for prefix, g, d in zip(prefixes, greedy, default):
        lines += [f"## {prefix}", "", *_side_by_side({"greedy": g, name: d}), "",
                  *_table({"greedy": lyric_metrics([g], reference), name: lyric_metrics([d], reference)}), ""]
    return LyricsResult(samples, human), "\n".join(lines)
