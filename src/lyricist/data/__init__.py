"""Data layer, importing nothing else of lyricist: raw corpus -> clean text and splits (corpus), tokens <-> ids
(vocab), id arrays -> (X, Y) batches (batching), and the record of how encoded data was prepared (prepared)."""
