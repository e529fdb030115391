"""Print the expected values used by the SQuAD metric tests (src/squad/metric.rs and
tests/squad_dev.rs), computed with the official evaluate-v1.1.py logic.

The tests themselves never run Python: this script documents where their constants come
from. Run it with Python 3 from the repository root:

    python3 tests/data/squad_metric_cases.py

The functions below are a transcription of evaluate-v1.1.py (Rajpurkar et al.).
"""
import gzip
import json
import re
import string
from collections import Counter


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                if qa['id'] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x['text'], qa['answers']))
                prediction = predictions[qa['id']]
                exact_match += metric_max_over_ground_truths(
                    exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {'exact_match': exact_match, 'f1': f1}


NORMALIZE = [
    "The Eiffel Tower", "theater", "Theatre of the Absurd", "an apple a day", "A.B.C.",
    "a-b", "the_end", "_the_", "“quoted” — dash", "rock’n’roll", "It's 3:00 p.m.", "Straße",
    "STRASSE", "İstanbul", "ΟΔΟΣ ΣΟΦΟΣ.", "ΟΔΟΣ'Α", "a\u0301 the", "thé",
    "a\u00a0b\u2003c\u001cd\u0085e\u3000f", "x\u200by", "the²", "½the", "the‿a", "  \t\n ",
    ".", "The", "Ⅻthe", "ＴＨＥ", "the\u200d",
]
F1 = [
    ("STRASSE", "straße"), ("", "."), ("a b c", "b c d e"), ("x x y", "x y y"),
    ("in Paris, France", "Paris"), ("one two three", "three two one"),
]
FLOATS = [100.0, 0.0, 100.0 * 3.0 / 10570.0, 1.0 / 3.0, 81.20151371807, 0.0001, 0.00001,
          0.000012345, 1e16, 1234567890123456.0, 12345678901234567.0, 1e22, -2.5, 5e-324,
          1.7976931348623157e308, 123.0, 0.1 + 0.2]


def shifted_prediction(context, answer):
    """The deterministic, imperfect predictions of tests/squad_dev.rs: the first gold answer
    widened by 7 characters on the left and 5 on the right (Python str indices)."""
    s = answer['answer_start']
    return context[max(0, s - 7): s + len(answer['text']) + 5]


def main():
    for s in NORMALIZE:
        print(f"normalize {s!r} -> {normalize_answer(s)!r}")
    for p, g in F1:
        print(f"f1 {p!r} {g!r} -> {f1_score(p, g)!r} em {exact_match_score(p, g)}")
    for x in FLOATS:
        print(f"repr {x!r} -> {json.dumps(x)}")

    with gzip.open('../shared/data/squad/dev-v1.1.json.gz') as f:
        data = json.load(f)['data']
    qas = [(p['context'], qa) for a in data for p in a['paragraphs'] for qa in p['qas']]
    gold = {qa['id']: qa['answers'][0]['text'] for _, qa in qas}
    print('gold', json.dumps(evaluate(data, gold)))
    empty = {qa['id']: '' for _, qa in qas}
    print('empty', json.dumps(evaluate(data, empty)))
    # Every 10th question left out, the others widened: non-trivial EM and F1.
    shifted = {qa['id']: shifted_prediction(c, qa['answers'][0])
               for i, (c, qa) in enumerate(qas) if i % 10 != 9}
    print('shifted', json.dumps(evaluate(data, shifted)), 'missing', len(qas) - len(shifted))
    upper = {qa['id']: qa['answers'][0]['text'].upper() for _, qa in qas}
    print('upper', json.dumps(evaluate(data, upper)))


if __name__ == '__main__':
    main()
