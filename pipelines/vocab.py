"""DVC stage `vocab`: build the vocabulary (characters or words) on train, encode every split to ids."""

import argparse
import sys
from pathlib import Path

from lyricist.cli.config import read, run
from lyricist.data.corpus import SPLITS
from lyricist.data.prepared import write_record
from lyricist.data.vocab import Vocab, VocabError, check_useful, encode_to_array, save_ids, unk_rate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--in-dir", required=True, help="data/processed/<corpus>/")
    parser.add_argument("--out-dir", required=True, help="data/encoded/<corpus>/")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    p = read(args.params, "data")  # checked before any work
    texts = {s: (Path(args.in_dir) / f"{s}.txt").read_text(encoding="utf-8") for s in SPLITS}
    # Built on train only: tokens first seen in val/test are <unk>, as they would be
    # for any unseen lyrics.
    vocab = Vocab.build(texts["train"], min_freq=p.min_freq, tokenizer=p.tokenizer, max_vocab_size=p.max_vocab_size)
    check_useful(vocab, p.min_freq, p.max_vocab_size, p.min_vocab_size)  # before any output
    ids = {split: encode_to_array(vocab, text) for split, text in texts.items()}
    for split in ("val", "test"):  # held-out figures over mostly <unk> say little: refused before any output
        rate = unk_rate(ids[split], texts[split], vocab.tokenizer)
        if p.max_unk_rate is not None and rate > p.max_unk_rate:
            raise VocabError(f"{rate:.1%} of the {split} split is <unk> (above data.max_unk_rate={p.max_unk_rate}): "
                             "its tokens are missing from train's vocabulary, so its perplexity says little. Is the "
                             "corpus one text? Lower data.min_freq, raise data.max_vocab_size, split it otherwise, "
                             "or allow it on purpose with data.max_unk_rate=null")
    out = Path(args.out_dir)
    vocab.save(out / "vocab.json")
    for split, array in ids.items():
        save_ids(out / f"{split}.npy", array, len(vocab))  # one integer type for every split
    write_record(out, p.model_dump())  # training refuses data made with other settings
    cap = f", max_vocab_size {p.max_vocab_size}" if p.max_vocab_size else ""
    print(f"vocab: {len(vocab):,} {p.tokenizer} tokens (min_freq {p.min_freq}{cap}) -> {out}")


if __name__ == "__main__":
    sys.exit(run(main))
