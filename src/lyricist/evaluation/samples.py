"""The evaluate stage's samples: for each prefix the seeds' greedy decoding beside the default
decoding (conf's `generate.*`), measured as lyrics against the human test text."""

from __future__ import annotations

import html
import statistics

import torch

from lyricist.data.vocab import Vocab
from lyricist.evaluation.lyrics import COPY_N, NgramSet, human_pieces, lyric_metrics
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


def describe(d: Decoding) -> str:
    """The decoding options in words, only those that act: 'sample, temperature 0.8, top-p 0.95'."""
    sample = d.strategy == "sample"
    parts = [f"sample, temperature {d.temperature:g}" if sample else "greedy",
             sample and d.top_k and f"top-k {d.top_k}", sample and d.top_p is not None and f"top-p {d.top_p:g}",
             d.repetition_penalty != 1 and f"repetition penalty {d.repetition_penalty:g} over {d.repetition_window} tokens",
             d.no_repeat_ngram and f"no repeated {d.no_repeat_ngram}-gram",
             sample and d.seed is not None and f"seed {d.seed} (+1 per prefix)"]
    return ", ".join(part for part in parts if part)


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
    """The default decoding's lyric metrics (all prefixes together) and the human test text's, and a
    markdown page: per prefix the greedy and the default sample side by side, with their metrics."""
    reference = NgramSet(vocab.decode(train_ids, unk="\ufffd"))  # one character per <unk>
    num_chars = decoding.num_chars
    greedy = [generate(model, vocab, p, Decoding(num_chars=num_chars), allow_unknown=True) for p in prefixes]
    default = [generate(model, vocab, p, decoding, index=i, allow_unknown=True) for i, p in enumerate(prefixes)]
    name, unit = "default decoding", "characters" if vocab.tokenizer == "char" else "words"
    overall = {"greedy": lyric_metrics(greedy, reference), name: lyric_metrics(default, reference)}
    if test_ids is not None and len(test_ids):
        # Pieces as long as the samples, so that line counts and distinct-n compare.
        length = round(statistics.fmean(len(text) for text in default)) if default else num_chars
        overall["human test text"] = lyric_metrics(human_pieces(vocab.decode(test_ids, unk="\ufffd"), length), reference)
    lines = [f"# Samples ({num_chars} {unit} after the prefix)", "",
             f"Each prefix's greedy decoding (the seeds' argmax) beside the default decoding (`generate.*`: "
             f"{describe(decoding)}). All prefixes together, and the human test text cut into pieces as "
             "long as a sample:",
             "", *_table(overall, notes=True), ""]
    for prefix, g, d in zip(prefixes, greedy, default):
        lines += [f"## {prefix}", "", *_side_by_side({"greedy": g, name: d}), "",
                  *_table({"greedy": lyric_metrics([g], reference), name: lyric_metrics([d], reference)}), ""]
    return LyricsResult(overall[name], overall.get("human test text")), "\n".join(lines)
