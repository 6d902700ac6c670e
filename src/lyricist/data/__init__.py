"""Data layer, importing nothing else of lyricist: raw corpus -> text, splits, ids, batches (README's Layout)."""
