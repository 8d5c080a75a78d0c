"""The text-to-image digits model's bundled prompts and its CLIP tokenizer, built in code.

Nothing can be downloaded here, so the tokenizer is a genuine byte-level BPE CLIP tokenizer whose merges are
learned from the prompts below: ``vocab.json`` and ``merges.txt`` are written in CLIP's own format and read by
``transformers.CLIPTokenizer``, so ``StableDiffusionPipeline`` tokenises exactly as it does for real Stable
Diffusion (bos, tokens, eos, padded with ``<|endoftext|>`` to ``model_max_length``). Every prompt word is one
token; any other text still tokenises, into byte-level pieces as in real CLIP, so unknown words never fail.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = (  # {word}: "seven", {digit}: "7"
    "a handwritten {word}",
    "the digit {digit}",
    "a thick {digit}",
    "number {word}",
    "a picture of the number {digit}",
)
PROMPTS: list[tuple[str, int]] = [
    (phrasing.format(word=DIGIT_WORDS[digit], digit=digit), digit)
    for digit in range(len(DIGIT_WORDS))
    for phrasing in PHRASINGS
]
EMPTY_PROMPT = ""  # the unconditional prompt classifier-free guidance pairs every prompt with
MODEL_MAX_LENGTH = 16
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"


def prompts_by_digit() -> list[list[str]]:
    """``[digit] -> its phrasings``, in the order of ``PHRASINGS``."""
    table: list[list[str]] = [[] for _ in DIGIT_WORDS]
    for prompt, digit in PROMPTS:
        table[digit].append(prompt)
    return table


def prompts_for_digits(digits: list[int], offset: int = 0) -> list[str]:
    """One prompt per requested digit, cycling through each digit's phrasings so a balanced batch uses all."""
    table = prompts_by_digit()
    return [
        table[digit][((offset + index) // len(DIGIT_WORDS)) % len(table[digit])] for index, digit in enumerate(digits)
    ]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for value in range(256):
        if value not in printable:
            printable.append(value)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _word_pieces(texts: list[str]) -> Counter:
    """Each word of ``texts`` as CLIP pre-tokenises it (lowercased, split, byte-mapped), with its count."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        base = CLIPTokenizer(*_write_files(Path(scratch), _byte_symbols(), []))
    backend = base.backend_tokenizer
    words: Counter = Counter()
    for text in texts:
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            words[piece] += 1
    return words


def learn_merges(words: Counter) -> list[tuple[str, str]]:
    """Byte-pair merges until every word is a single symbol: the most frequent pair first, ties broken by the
    pair itself, so the vocabulary is the same on every machine."""
    spellings = {word: [*word[:-1], word[-1] + END_OF_WORD] for word in words}
    merges: list[tuple[str, str]] = []
    while True:
        pair_counts: Counter = Counter()
        for word, symbols in spellings.items():
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] += words[word]
        if not pair_counts:
            return merges
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        for word, symbols in spellings.items():
            merged, index = [], 0
            while index < len(symbols):
                if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == best:
                    merged.append(symbols[index] + symbols[index + 1])
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            spellings[word] = merged


def _write_files(folder: Path, base_symbols: list[str], merges: list[tuple[str, str]]) -> tuple[str, str]:
    """CLIP's layout: byte symbols, the same with ``</w>``, one entry per merge, then bos and eos."""
    tokens = [*base_symbols, *(symbol + END_OF_WORD for symbol in base_symbols), *(a + b for a, b in merges)]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps({token: index for index, token in enumerate(tokens)}, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return str(vocab_path), str(merges_path)


def write_clip_vocabulary(folder: Path, texts: list[str] | None = None) -> tuple[str, str]:
    """Writes ``vocab.json`` and ``merges.txt`` covering the words of ``texts`` (default: ``PROMPTS``)."""
    texts = [prompt for prompt, _ in PROMPTS] if texts is None else texts
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _write_files(folder, _byte_symbols(), learn_merges(_word_pieces(texts)))


def build_tokenizer(model_max_length: int = MODEL_MAX_LENGTH, texts: list[str] | None = None):
    """A ``transformers.CLIPTokenizer`` for the prompt words, padding to ``model_max_length`` tokens."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = write_clip_vocabulary(Path(scratch), texts)
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)
