"""Fingerprint of the SQuAD v1.1 dev set's windows (max_seq_length 384, doc_stride 128) as
the Python `tokenizers` library (0.23.3, pip) makes them, for tests/squad_dev_features.rs.

The same pipeline as BertTokenizerFast built from the uncased vocabulary; the Rust side must
produce the same number of windows and the same FNV-1a 64 hash over every window's sample
index and, per token, id, type id, attention mask, char offsets and sequence id (9 = none),
each as 8 little-endian bytes. Run from the repository root (tests never run it):

    python3 -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers==0.23.3
    /tmp/tok/bin/python tests/data/squad_dev_windows_fingerprint.py
"""
import gzip, json, sys
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
vocab = '../shared/vocab/bert-base-uncased-vocab.txt'
tok = Tokenizer(WordPiece.from_file(vocab, unk_token='[UNK]'))
tok.normalizer = normalizers.BertNormalizer(lowercase=True)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tok.post_processor = processors.BertProcessing(('[SEP]', tok.token_to_id('[SEP]')), ('[CLS]', tok.token_to_id('[CLS]')))
tok.add_special_tokens(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'])
tok.enable_truncation(384, stride=128, strategy='only_second')
tok.enable_padding(length=384, pad_id=0, pad_token='[PAD]')
d = json.load(gzip.open('../shared/data/squad/dev-v1.1.json.gz'))['data']
pairs = [(qa['question'], p['context']) for a in d for p in a['paragraphs'] for qa in p['qas']]
encs = tok.encode_batch(pairs)
M = (1 << 64) - 1
h = 0xcbf29ce484222325
def feed(x):
    global h
    for b in int(x).to_bytes(8, 'little'):
        h ^= b; h = (h * 0x100000001b3) & M
n = 0
for i, e in enumerate(encs):
    for w in [e] + e.overflowing:
        n += 1
        feed(i)
        for t in range(len(w.ids)):
            s = w.sequence_ids[t]
            feed(w.ids[t]); feed(w.type_ids[t]); feed(w.attention_mask[t])
            feed(w.offsets[t][0]); feed(w.offsets[t][1]); feed(9 if s is None else s)
print(n, hex(h))
