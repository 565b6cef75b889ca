"""The BPE tokenizer: round trips, training on Shapes captions, files, bad input, and parity with transformers'
CLIPTokenizer on a tiny CLIP-layout vocabulary built here (no downloads)."""
import json
import random
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from minidiff.data.captions import CATEGORIES, describe, plain_caption
from minidiff.data.shapes_dataset import random_spec
from minidiff.data.tokenizer import BOS, EOS, BPETokenizer, pretokenize, word_symbols

# Strings meant to hit every branch of normalising, pre-tokenising and byte fallback.
VARIED = [
    "a red circle above a blue square",
    "It's a RED circle, isn't it? They're here; we'll see. I'm sure you'd agree",
    "3 purple squares, 12 circles and 1,024 dots!!!",
    "café naïve résumé Ångström",
    "cafe\u0301 (an e and a combining accent: NFC makes it one character)",
    "emoji 😀🎨 and CJK 猫が好き",
    "multiple    spaces\tand\nnewlines  ",
    "UPPER lower MiXeD",
    "rock'n'roll don't it''s ''",
    "hello... ?!? (brackets) [x] {y} <z> \"quotes\" 'single'",
    "<|endoftext|> inside a <|startoftext|> prompt",
    "x<|ENDOFTEXT|>y",
    "ΟΔΟΣ and İstanbul",
    "tab\x00null\x07bell a\u00a0b\u3000c\u2028d\u200be",
    "aaaa aaaaaaa banana bandana",
    "",
    "   ",
    "a red circle " * 40,
]


def shapes_captions(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return [describe(random_spec(CATEGORIES[i % len(CATEGORIES)], rng), rng) for i in range(n)]


@pytest.fixture(scope="module")
def shapes_tokenizer():
    return BPETokenizer.train(shapes_captions(), vocab_size=1000)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny CLIP-layout tokenizer folder: 512 byte tokens, ~190 merges learned from VARIED, BOS, EOS."""
    tokenizer = BPETokenizer.train(VARIED[:15] * 2, vocab_size=700, min_frequency=1)
    return tokenizer.save(tmp_path_factory.mktemp("clip_tokenizer"))


# ---------------------------------------------------------------------------- the algorithm


def test_docstring_worked_example():
    tokenizer = BPETokenizer.train(["red red reduce"], vocab_size=1000)
    assert tokenizer.merges == [("r", "e"), ("re", "d</w>")]
    tokens = lambda text: [tokenizer.id_to_token[i] for i in tokenizer.encode(text)]   # noqa: E731
    assert tokens("Red!") == ["red</w>", "!</w>"]
    assert tokens("reduce") == ["re", "d", "u", "c", "e</w>"]
    ids = tokenizer(["red"])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :3].tolist() == [tokenizer.bos_id, tokenizer.vocab["red</w>"], tokenizer.eos_id]
    assert (ids[0, 3:] == tokenizer.pad_id).all()


def test_clip_vocabulary_layout():
    """Ids 0..255 are the bytes, 256..511 the same with </w>, BOS and EOS last: CLIP's order."""
    tokenizer = BPETokenizer.train(["a b"], vocab_size=514)
    assert len(tokenizer) == 514 and tokenizer.merges == []
    assert tokenizer.vocab["!"] == 0 and tokenizer.vocab["!</w>"] == 256
    assert tokenizer.vocab["a"] == ord("a") - ord("!")
    assert (tokenizer.vocab[BOS], tokenizer.vocab[EOS]) == (512, 513)
    assert word_symbols("é!") == ["Ã", "©", "!</w>"]                     # é is two UTF-8 bytes


def test_pretokenize_follows_clip():
    assert pretokenize("It's  RED!! 2024, ok?") == ["it", "'s", "red", "!!", "2", "0", "2", "4", ",", "ok", "?"]


def test_round_trip_gives_normalised_words(tmp_path):
    tokenizer = BPETokenizer.from_folder(BPETokenizer.train(VARIED, vocab_size=650, min_frequency=1).save(tmp_path))
    for text in VARIED + ["never seen: zebra quartz 🦓 Ω"]:
        if "<|" in text:
            continue                                                     # BOS/EOS in the text end decoding
        assert tokenizer.decode(tokenizer.encode(text)) == " ".join(pretokenize(text))
    assert tokenizer.decode(tokenizer.encode("Hello,   WORLD")) == "hello , world"


def test_shapes_captions_round_trip_exactly(shapes_tokenizer):
    rng = np.random.default_rng(1)
    captions = [plain_caption(random_spec(c, rng)) for c in CATEGORIES] + shapes_captions(50, seed=1)
    for caption in captions:
        if "," not in caption:                                          # "left, a" comes back as "left , a"
            assert shapes_tokenizer.decode(shapes_tokenizer.encode(caption)) == caption
        row = shapes_tokenizer([caption])[0]                            # (77,)
        assert shapes_tokenizer.decode(row) == " ".join(pretokenize(caption))


# ---------------------------------------------------------------------------- training on Shapes


def test_training_on_shapes_is_deterministic(shapes_tokenizer):
    captions = shapes_captions()
    random.Random(0).shuffle(captions)
    again = BPETokenizer.train(captions, vocab_size=1000)
    assert again.merges == shapes_tokenizer.merges and again.vocab == shapes_tokenizer.vocab


def test_first_merge_is_the_most_frequent_pair():
    captions = shapes_captions(200)
    pairs = Counter()
    for caption in captions:
        for word in pretokenize(caption):
            symbols = word_symbols(word)
            pairs.update(zip(symbols, symbols[1:]))
    top = max(pairs.values())
    expected = min(pair for pair, count in pairs.items() if count == top)   # ties: the pair that sorts first
    assert BPETokenizer.train(captions, vocab_size=515).merges == [expected]


def test_every_shapes_word_is_one_token(shapes_tokenizer):
    words = {word for caption in shapes_captions() for word in pretokenize(caption)}
    assert {"circle", "squares", "purple", "above", "left", ","} <= words
    for word in words:
        assert len(shapes_tokenizer.encode(word)) == 1, word
    # Training stopped when no pair occurred twice, well before 1000 tokens.
    assert len(shapes_tokenizer) < 1000


def test_each_merge_shortens_the_corpus():
    """The most frequent pair goes first, so the captions shrink fastest early: 50 merges halve the byte count."""
    captions = shapes_captions()
    tokenizers = [BPETokenizer.train(captions, vocab_size=514 + k) for k in (0, 10, 20, 50)]
    lengths = [sum(len(tokenizer.encode(c)) for c in captions) for tokenizer in tokenizers]
    n_bytes = sum(len(word.encode("utf-8")) for c in captions for word in pretokenize(c))
    assert lengths[0] == n_bytes
    assert all(a > b for a, b in zip(lengths, lengths[1:]))
    assert lengths[-1] < n_bytes / 2


# ---------------------------------------------------------------------------- files


def test_save_and_from_folder_round_trip(shapes_tokenizer, tmp_path):
    loaded = BPETokenizer.from_folder(shapes_tokenizer.save(tmp_path))
    assert loaded.vocab == shapes_tokenizer.vocab and loaded.merges == shapes_tokenizer.merges
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (shapes_tokenizer.bos_id, shapes_tokenizer.eos_id,
                                                             shapes_tokenizer.eos_id)
    captions = shapes_captions(20, seed=2)
    assert torch.equal(loaded(captions), shapes_tokenizer(captions))


def test_from_folder_reads_the_pad_token(shapes_tokenizer, tmp_path):
    """SD 2.x's OpenCLIP tokenizer pads with "!" (id 0): the folder's special_tokens_map.json says so."""
    shapes_tokenizer.save(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
    loaded = BPETokenizer.from_folder(tmp_path)
    assert loaded.pad_id == 0
    ids = loaded(["a red circle", ""], context_length=10)                  # (2, 10)
    assert ids[1].tolist() == [loaded.bos_id, loaded.eos_id] + [0] * 8
    assert loaded.eos_positions(ids).tolist() == [len(loaded.encode("a red circle")) + 1, 1]
    # As in transformers, the pad token written in a prompt is the pad token: "!" is id 0, not "!</w>".
    assert loaded.encode("wow!") == shapes_tokenizer.encode("wow") + [0]
    assert shapes_tokenizer.encode("wow!") == shapes_tokenizer.encode("wow") + [shapes_tokenizer.vocab["!</w>"]]


def test_from_folder_errors(shapes_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no tokenizer folder"):
        BPETokenizer.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither vocab.json"):
        BPETokenizer.from_folder(tmp_path)
    shapes_tokenizer.save(tmp_path)
    merges = (tmp_path / "merges.txt").read_text()
    (tmp_path / "merges.txt").write_text(merges + "one_token_only\n")
    with pytest.raises(ValueError, match="not two tokens"):
        BPETokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_text(merges + "q z\n")
    with pytest.raises(ValueError, match="do not belong together"):
        BPETokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_text(merges)
    (tmp_path / "vocab.json").write_text('{"a": 0,')
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match="lacks 511 of the 512 byte tokens"):
        BPETokenizer.from_folder(tmp_path)
    shapes_tokenizer.save(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ValueError, match="pad token '<pad>' is not in the vocabulary"):
        BPETokenizer.from_folder(tmp_path)


# ---------------------------------------------------------------------------- bad input


def test_long_prompt_truncates_and_warns_once(shapes_tokenizer):
    tokenizer = BPETokenizer(shapes_tokenizer.vocab, shapes_tokenizer.merges)
    long = "a red circle above a blue square " * 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = tokenizer([long, "a red circle", long])                    # (3, 77)
        tokenizer(long)
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert ids.shape == (3, 77)
    assert ids[0].tolist() == [tokenizer.bos_id, *tokenizer.encode(long)[:75], tokenizer.eos_id]
    assert tokenizer.eos_positions(ids).tolist() == [76, 4, 76]
    with pytest.warns(UserWarning, match="truncated"):                  # a new tokenizer warns again
        BPETokenizer(shapes_tokenizer.vocab, shapes_tokenizer.merges)(long)


def test_empty_prompt_is_bos_eos_and_padding(shapes_tokenizer):
    for text in ("", "   \n\t"):
        assert shapes_tokenizer.encode(text) == []
        row = shapes_tokenizer(text, context_length=8)[0].tolist()
        assert row == [shapes_tokenizer.bos_id] + [shapes_tokenizer.eos_id] * 7   # SD 1.x pads with EOS
        assert shapes_tokenizer.decode(row) == ""


def test_unknown_characters_go_through_bytes(shapes_tokenizer):
    for text in ("🦓", "猫が好き", "Ω≈ç√", "\x00\x07"):
        ids = shapes_tokenizer.encode(text)
        assert len(ids) >= len(pretokenize(text)) and all(i < 512 for i in ids)   # byte tokens only
        assert shapes_tokenizer.decode(ids) == " ".join(pretokenize(text))


def test_bad_arguments(shapes_tokenizer):
    with pytest.raises(ValueError, match="must be a string"):
        shapes_tokenizer([None])
    with pytest.raises(ValueError, match="context_length"):
        shapes_tokenizer("a red circle", context_length=1)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        shapes_tokenizer.decode([len(shapes_tokenizer) + 5])
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["a"], vocab_size=100)


# ---------------------------------------------------------------------------- parity with transformers


def test_matches_transformers_clip_tokenizer(clip_folder):
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPTokenizer.from_pretrained(clip_folder)
    ours = BPETokenizer.from_folder(clip_folder)
    texts = VARIED + ["never seen: zebra quartz 🦓 Ω", "a" * 200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(texts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids                    # (B, 77), as SD pipelines call it
        got = ours(texts)                                                      # (B, 77)
    assert got.shape == expected.shape == (len(texts), 77)
    for text, row, reference_row in zip(texts, got, expected):
        assert row.tolist() == reference_row.tolist(), text
    for text in texts:
        if "<|" not in text:
            ids = ours.encode(text)
            assert ids == reference(text, add_special_tokens=False).input_ids, text
            assert ours.decode(ids) == reference.decode(ids), text


def test_matches_transformers_with_exclamation_padding(clip_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    for name in ("vocab.json", "merges.txt"):                              # the hub layout, plus SD 2.x's pad
        (tmp_path / name).write_bytes((clip_folder / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!", "model_max_length": 77}))
    reference = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    ours = BPETokenizer.from_folder(tmp_path)
    assert ours.pad_id == reference.pad_token_id == 0
    texts = ["a red circle", "", "It's 3 o'clock!", "wow!!! yes!", "?!", "<|endoftext|>!"]
    expected = reference(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours(texts), expected)


def test_reads_a_folder_saved_by_transformers(clip_folder, tmp_path):
    """transformers 5 saves tokenizer.json instead of vocab.json + merges.txt; from_folder reads either."""
    transformers = pytest.importorskip("transformers")
    transformers.CLIPTokenizer.from_pretrained(clip_folder).save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    ours, original = BPETokenizer.from_folder(tmp_path), BPETokenizer.from_folder(clip_folder)
    assert ours.vocab == original.vocab and ours.merges == original.merges
    assert torch.equal(ours(VARIED[:6]), original(VARIED[:6]))
