"""Byte-pair encoding (BPE): CLIP's tokenizer, written from scratch, trainable on the Shapes captions.

Papers: Sennrich, Haddow, Birch 2016, "Neural Machine Translation of Rare Words with Subword Units"
(arXiv:1508.07909) learns a subword vocabulary by repeatedly merging the most frequent adjacent pair of symbols;
Radford et al. 2021, CLIP (arXiv:2103.00020), uses a byte-level variant with a 49,408-token vocabulary and a
context of 77 tokens, which Stable Diffusion 1.x/2.x inherit.

| code name         | meaning                                                                               |
|-------------------|---------------------------------------------------------------------------------------|
| `BYTE_TO_CHAR`    | the 256 bytes as 256 printable characters, so no input character is ever unknown      |
| `END_OF_WORD`     | `</w>`, glued to a word's last symbol: final "red</w>" differs from "red" in "reduce" |
| `merges`, `ranks` | the learned merge rules in order; a lower rank was learned earlier and applies first  |
| `vocab`           | token string -> id: 256 bytes, 256 bytes + `</w>`, one token per merge, then BOS, EOS |
| BOS, EOS          | `<|startoftext|>`, `<|endoftext|>`: the first and last token of every prompt          |

How a prompt becomes ids (CLIP's recipe, as transformers' CLIPTokenizer applies it):
1. normalise: Unicode NFC, every run of whitespace becomes one space, lowercase;
2. pre-tokenise with `PATTERN` into words: contractions ('s 't 're 've 'm 'll 'd), runs of letters, single digits,
   runs of other symbols; whitespace only separates;
3. write each word as its UTF-8 bytes mapped through `BYTE_TO_CHAR`, `</w>` glued to the last one;
4. repeatedly merge the adjacent pair of lowest rank until no pair has a rank; each final symbol is one token.

Worked example. `BPETokenizer.train(["red red reduce"], vocab_size=1000)` counts the words red (2) and reduce (1),
then the pairs: (r, e) occurs 3 times, so "re" is merge 0; next (re, d</w>) occurs twice, so "red</w>" is merge 1;
every other pair occurs once, below `min_frequency=2`, so training stops. "Red!" now encodes as "red</w>", "!</w>";
"reduce" as "re", "d", "u", "c", "e</w>"; `tokenizer(["red"])` gives BOS, "red</w>", EOS, then padding to 77 ids.

Two differences from OpenAI's original Python tokenizer, both shared with transformers' CLIPTokenizer: no `ftfy` text
repair or HTML unescaping, and lowercasing is done character by character (a Greek final capital sigma becomes
"σ", not "ς"). For the plain prompts of this course these change nothing. Like transformers, a special token written
exactly in a prompt is that token; with SD 2.x's folder, whose pad token is "!", every "!" in a prompt therefore
becomes the pad id 0 rather than "!</w>" (OpenCLIP's own tokenizer would give "!</w>").
"""
from __future__ import annotations

import json
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import regex
import torch

from minidiff.io import read_json

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's pre-tokenisation; `regex` (not `re`) because it needs the Unicode classes \p{L} (letter), \p{N} (number).
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""")


def _bytes_to_chars() -> dict[int, str]:
    """Each byte as one printable character: printable Latin-1 bytes stand for themselves, the 68 others (control
    characters, space, ...) take the characters 256, 257, ... in order. Insertion order is CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


BYTE_TO_CHAR = _bytes_to_chars()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
BASE_TOKENS = [*BYTE_TO_CHAR.values(), *(c + END_OF_WORD for c in BYTE_TO_CHAR.values())]   # ids 0..511 in CLIP


def normalize(text: str) -> str:
    """NFC, one space for each run of whitespace, lowercase (character by character, as transformers does)."""
    text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text))
    return "".join(c.lower() for c in text).strip()


def pretokenize(text: str) -> list[str]:
    """The words BPE sees: `PATTERN`'s matches in the normalised text ("It's red!" -> ["it", "'s", "red", "!"])."""
    return PATTERN.findall(normalize(text))


def word_symbols(word: str) -> list[str]:
    """A word as byte characters with `</w>` on the last: "red" -> ["r", "e", "d</w>"]."""
    symbols = [BYTE_TO_CHAR[b] for b in word.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return symbols


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every occurrence of `pair`, scanning left to right: (a, a) on "a a a" gives "aa a"."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class BPETokenizer:
    """Byte-level BPE in CLIP's style. `encode`/`decode` map text <-> ids; calling it frames and pads a batch."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], bos_token: str = BOS,
                 eos_token: str = EOS, pad_token: str = EOS):
        missing = [t for t in BASE_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} of the 512 byte tokens (e.g. {missing[0]!r}): "
                             f"a byte-level BPE vocabulary must hold every byte with and without '{END_OF_WORD}'")
        for name, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if token not in vocab:
                raise ValueError(f"the {name} token {token!r} is not in the vocabulary: add it, or name another")
        for rank, (a, b) in enumerate(merges):
            if a + b not in vocab:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) makes {a + b!r}, which is not in the vocabulary: "
                                 f"the vocabulary and merges files do not belong together")
        self.vocab, self.merges = dict(vocab), [tuple(m) for m in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id, self.eos_id, self.pad_id = vocab[bos_token], vocab[eos_token], vocab[pad_token]
        # A special token written exactly in a prompt is that token (as in transformers), split off before
        # normalising; any other spelling ("<|ENDOFTEXT|>") is plain text: "<|", "endoftext", "|>".
        specials = sorted({bos_token, eos_token, pad_token}, key=len, reverse=True)
        self._special_split = regex.compile("(" + "|".join(map(regex.escape, specials)) + ")")
        self._cache: dict[str, list[int]] = {}       # word -> ids; prompts repeat words, BPE runs once per word
        self._warned_truncation = False

    def __len__(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------------ text -> ids

    def bpe(self, word: str) -> list[str]:
        """Merge the adjacent pair of lowest rank until no adjacent pair has a rank."""
        symbols = word_symbols(word)
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            symbols = merge_pair(symbols, best)
        return symbols

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS, EOS or padding. Any character encodes (through its UTF-8 bytes)."""
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
        ids = []
        for chunk in self._special_split.split(text):
            if chunk in (self.bos_token, self.eos_token, self.pad_token):
                ids.append(self.vocab[chunk])
                continue
            for word in pretokenize(chunk):
                if word not in self._cache:
                    self._cache[word] = [self.vocab[token] for token in self.bpe(word)]
                ids += self._cache[word]
        return ids

    def __call__(self, texts: str | list[str], context_length: int = 77) -> torch.Tensor:
        """Ids of a batch of prompts, (B, context_length) int64: BOS, tokens, EOS, then the pad id.

        A prompt longer than context_length - 2 tokens keeps its first tokens and still ends with EOS; the first
        time this happens the tokenizer warns. An empty prompt gives BOS, EOS and padding."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if context_length < 2:
            raise ValueError(f"context_length must leave room for BOS and EOS (>= 2), got {context_length}")
        ids = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)   # (B, L)
        for i, text in enumerate(texts):
            tokens = self.encode(text)
            if len(tokens) > context_length - 2:
                self._warn_truncation(text, len(tokens), context_length)
                tokens = tokens[:context_length - 2]
            row = [self.bos_id, *tokens, self.eos_id]
            ids[i, :len(row)] = torch.tensor(row)
        return ids

    def _warn_truncation(self, text: str, length: int, context_length: int):
        if not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f"prompt {text[:40]!r}... has {length} tokens, more than the {context_length - 2} that fit "
                          f"between BOS and EOS: it is truncated (shorten it; this warning is shown once)",
                          stacklevel=3)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B,) position of the first EOS, where CLIP's text model pools (padding may be EOS too)."""
        return (ids == self.eos_id).int().argmax(dim=-1)   # (B,): argmax returns the first maximum

    # ------------------------------------------------------------------------ ids -> text

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ids: BOS is skipped and the first EOS ends the text (what follows is padding). Words come back
        separated by single spaces: "It's  red!" encodes and decodes to "it 's red !"."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        data = bytearray()
        for i in ids:
            if i == self.eos_id:
                break
            if i == self.bos_id:
                continue
            if i not in self.id_to_token:
                raise ValueError(f"id {i} is not in the vocabulary of {len(self)} tokens")
            token = self.id_to_token[i]
            word_end = token.endswith(END_OF_WORD)
            data += bytes(CHAR_TO_BYTE[c] for c in token.removesuffix(END_OF_WORD)) + (b" " if word_end else b"")
        return data.decode("utf-8", errors="replace").strip()

    # ------------------------------------------------------------------------ learning merges

    @classmethod
    def train(cls, texts: list[str], vocab_size: int, min_frequency: int = 2) -> "BPETokenizer":
        """Learn merges from `texts` (Sennrich et al., Algorithm 1): count every adjacent pair of symbols over all
        words, weighted by how often each word occurs; merge the most frequent pair everywhere; repeat until the
        vocabulary has `vocab_size` tokens or no pair occurs `min_frequency` times. Ties go to the pair that sorts
        first, so the result does not depend on the order of `texts`."""
        if vocab_size < len(BASE_TOKENS) + 2:
            raise ValueError(f"vocab_size must hold the 512 byte tokens, BOS and EOS (>= 514), got {vocab_size}")
        word_counts = Counter(word for text in texts for word in pretokenize(text))
        corpus = [(word_symbols(word), count) for word, count in sorted(word_counts.items())]
        tokens, merges = list(BASE_TOKENS), []
        known = set(tokens)
        while len(tokens) + 2 < vocab_size:
            pairs = Counter()
            for symbols, count in corpus:
                for pair in zip(symbols, symbols[1:]):
                    pairs[pair] += count
            if not pairs:
                break
            best, frequency = min(pairs.items(), key=lambda item: (-item[1], item[0]))
            if frequency < min_frequency:
                break
            merges.append(best)
            if best[0] + best[1] not in known:        # ("a", "bc") and ("ab", "c") make the same token
                tokens.append(best[0] + best[1])
                known.add(best[0] + best[1])
            corpus = [(merge_pair(symbols, best), count) for symbols, count in corpus]
        tokens += [BOS, EOS]
        return cls({token: i for i, token in enumerate(tokens)}, merges)

    # ------------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> Path:
        """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json: the layout of a Stable
        Diffusion `tokenizer/` folder, which `from_folder` and transformers' CLIPTokenizer both read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in self.merges)]
        (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                   "unk_token": self.eos_token}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
        config = {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path) -> "BPETokenizer":
        """Load vocab.json + merges.txt (or a tokenizers-library tokenizer.json) and the special tokens named in
        tokenizer_config.json / special_tokens_map.json: SD 1.x pads with EOS, SD 2.x with "!" (id 0)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"no tokenizer folder at {folder}: pass the folder holding vocab.json and merges.txt "
                             f"(a Stable Diffusion checkpoint's tokenizer/)")
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = read_json(folder / "vocab.json", "tokenizer file", "re-download or re-save the tokenizer")
            merges = _parse_merges((folder / "merges.txt").read_text(encoding="utf-8").splitlines(), folder)
        elif (folder / "tokenizer.json").is_file():
            model = read_json(folder / "tokenizer.json", "tokenizer file",
                              "re-download or re-save the tokenizer").get("model", {})
            vocab = model.get("vocab")
            merges = _parse_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])],
                                   folder / "tokenizer.json")
        else:
            raise ValueError(f"{folder} holds neither vocab.json + merges.txt nor tokenizer.json: "
                             f"copy the tokenizer files into it")
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise ValueError(f"the vocabulary in {folder} is not a mapping of token -> id: re-download the files")
        special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                found = read_json(folder / name, "tokenizer file", "re-download or re-save the tokenizer")
                for key in special:
                    value = found.get(key)
                    value = value.get("content") if isinstance(value, dict) else value
                    if isinstance(value, str):
                        special[key] = value
        return cls(vocab, merges, **special)


def _parse_merges(lines: list[str], source: Path) -> list[tuple[str, str]]:
    """Merge rules "a b", one a line; a first line "#version: ..." and blank lines are skipped."""
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}: merge {number} {line!r} is not two tokens separated by a space: "
                             f"the merges file is corrupt, re-download it")
        merges.append((parts[0], parts[1]))
    return merges
