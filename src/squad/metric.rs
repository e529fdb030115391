//! The official SQuAD v1.1 metric (`evaluate-v1.1.py`), ported to give the same numbers to
//! the last digit.
//!
//! Published SQuAD results are all computed with that script, so any difference here, even a
//! different treatment of one odd character, would make our numbers incomparable. Each step
//! below says which Python behaviour it reproduces and how that was checked (with Python 3.11,
//! Unicode 14.0):
//!
//! * `str.lower()`: Rust's [`str::to_lowercase`] gives the same result for every code point
//!   assigned in Unicode 14 (checked over all 1.1M code points), including the two
//!   context-dependent cases: `'İ'` becomes `"i̇"` (two code points) and `'Σ'` becomes `'ς'`
//!   at the end of a word (both implement Unicode's `Final_Sigma` rule the same way). The only
//!   differences are for 55 code points that Unicode 14 had not assigned yet, where Rust follows
//!   its newer Unicode tables, as newer Pythons do.
//! * punctuation: only the 32 ASCII characters of `string.punctuation` are removed; Unicode
//!   punctuation such as `“` or `—` stays.
//! * articles: `re.sub(r'\b(a|an|the)\b', ' ', text)`. Python's `\b` on a `str` treats a
//!   character as a word character when `ch.isalnum() or ch == '_'`, which is exactly general
//!   categories L* and N* plus `_` (checked over all code points). The `regex` crate's Unicode
//!   `\b` is different (it counts combining marks, connector punctuation and joiners as word
//!   characters), so the boundary test is written out here with Python's definition.
//! * `str.split()` splits on Python's whitespace, which is Rust's [`char::is_whitespace`] plus
//!   the four ASCII separators U+001C..U+001F (checked over all code points).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;

use super::data::{Answer, Dataset};

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Python's `str.isalnum() or ch == '_'`, the word characters of `re`'s `\b` on `str`.
static PY_WORD_CHAR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{N}_]$").expect("valid regex"));

fn is_py_word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    let mut buf = [0u8; 4];
    PY_WORD_CHAR.is_match(c.encode_utf8(&mut buf))
}

/// Python's `str.isspace()`, the separators of `str.split()` with no argument.
pub fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)` with Python's word-character definition.
///
/// Matches cannot overlap (each alternative is made of word characters and must be followed
/// by a non-word character), and Python tests the boundaries against the original text, so a
/// single left-to-right scan reproduces `re.sub`.
fn remove_articles(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let at_boundary = i == 0 || !is_py_word_char(chars[i - 1]);
        let matched = if at_boundary {
            ["a", "an", "the"].iter().find_map(|w| {
                let n = w.len();
                let word_matches =
                    chars.len() >= i + n && chars[i..i + n].iter().copied().eq(w.chars());
                let ends_at_boundary = chars.get(i + n).is_none_or(|&c| !is_py_word_char(c));
                (word_matches && ends_at_boundary).then_some(n)
            })
        } else {
            None
        };
        match matched {
            Some(n) => {
                out.push(' ');
                i += n;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// The official `normalize_answer`: lower-case, drop ASCII punctuation, replace the articles
/// "a", "an", "the" by a space, and collapse whitespace to single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    let no_articles = remove_articles(&no_punct);
    no_articles
        .split(is_py_whitespace)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The official `exact_match_score`: normalised strings are equal.
pub fn exact_match_score(prediction: &str, ground_truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(ground_truth)
}

fn tokens(normalized: &str) -> Vec<&str> {
    normalized.split(' ').filter(|t| !t.is_empty()).collect()
}

/// The official `f1_score`: F1 of the token multisets of the normalised strings; 0 when no
/// token is shared, including when both are empty.
pub fn f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p_norm = normalize_answer(prediction);
    let g_norm = normalize_answer(ground_truth);
    f1_of_tokens(&tokens(&p_norm), &tokens(&g_norm))
}

fn f1_of_tokens(prediction_tokens: &[&str], ground_truth_tokens: &[&str]) -> f64 {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in ground_truth_tokens {
        *counts.entry(t).or_default() += 1;
    }
    let mut num_same = 0usize;
    for t in prediction_tokens {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    // Same operations in the same order as the script, so the rounding is identical.
    let precision = 1.0 * num_same as f64 / prediction_tokens.len() as f64;
    let recall = 1.0 * num_same as f64 / ground_truth_tokens.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Result of scoring a set of predictions against a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Percentage of questions whose prediction exactly matches a gold answer (0..=100).
    pub exact_match: f64,
    /// Average over questions of the best token F1 against a gold answer, x100.
    pub f1: f64,
    /// Questions in the dataset: the denominator of both averages.
    pub total: usize,
    /// Questions without a prediction: they score 0 (as in the official script).
    pub missing: usize,
    /// Predictions whose id is not a question of the dataset: ignored.
    pub unknown_ids: usize,
}

impl Score {
    /// The official script's output line, byte for byte: `json.dumps` of
    /// `{"exact_match": ..., "f1": ...}` with Python float formatting.
    pub fn to_official_json(&self) -> String {
        format!(
            "{{\"exact_match\": {}, \"f1\": {}}}",
            python_float_repr(self.exact_match),
            python_float_repr(self.f1)
        )
    }
}

/// Score `predictions` (question id -> answer text) against every question of `dataset`
/// exactly as `evaluate-v1.1.py` does: per question the maximum over gold answers, EM and F1
/// separately; averages over all questions, missing predictions counting 0; times 100.
/// One question's exact match and F1 (0-1) against its gold answers, as the official script
/// takes them: the best over the answers.
pub fn score_one(prediction: &str, answers: &[Answer]) -> (bool, f64) {
    let p_norm = normalize_answer(prediction);
    let p_tokens = tokens(&p_norm);
    let mut em = false;
    let mut best_f1 = 0.0f64;
    for (i, gold) in answers.iter().enumerate() {
        let g_norm = normalize_answer(&gold.text);
        em |= p_norm == g_norm;
        let f1 = f1_of_tokens(&p_tokens, &tokens(&g_norm));
        if i == 0 || f1 > best_f1 {
            best_f1 = f1;
        }
    }
    (em, best_f1)
}

/// Each answered question's F1 (0-100, the score's scale), by question id.
pub fn f1_per_question(
    dataset: &Dataset,
    predictions: &HashMap<String, String>,
) -> HashMap<String, f64> {
    dataset
        .examples()
        .filter_map(|ex| {
            let prediction = predictions.get(ex.id)?;
            Some((
                ex.id.to_string(),
                100.0 * score_one(prediction, ex.answers).1,
            ))
        })
        .collect()
}

pub fn evaluate(dataset: &Dataset, predictions: &HashMap<String, String>) -> Score {
    let mut exact_match: u64 = 0;
    let mut f1_sum = 0.0f64;
    let mut total = 0usize;
    let mut missing = 0usize;
    let mut ids = HashSet::with_capacity(predictions.len());
    for ex in dataset.examples() {
        total += 1;
        ids.insert(ex.id);
        let Some(prediction) = predictions.get(ex.id) else {
            missing += 1;
            continue;
        };
        let (em, best_f1) = score_one(prediction, ex.answers);
        exact_match += u64::from(em);
        f1_sum += best_f1;
    }
    let unknown_ids = predictions
        .keys()
        .filter(|k| !ids.contains(k.as_str()))
        .count();
    // An empty dataset divides by zero in the script; report 0 rather than NaN.
    let denom = total.max(1) as f64;
    Score {
        exact_match: 100.0 * exact_match as f64 / denom,
        f1: 100.0 * f1_sum / denom,
        total,
        missing,
        unknown_ids,
    }
}

/// Python's `repr(float)` (what `json.dumps` prints): the shortest digits that round-trip,
/// in positional notation when the decimal exponent is in -4..16, otherwise scientific with a
/// signed two-digit-minimum exponent; integral values keep a trailing `.0` (`100.0`).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde<exp>".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    // Python's `decpt`: the value is 0.DIGITS x 10^decpt.
    let decpt = exp + 1;
    let n = digits.len() as i32;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values below were produced with Python 3.11.7 running the official
    // `normalize_answer` / `f1_score` / `repr`; `tests/data/squad_metric_cases.py` regenerates
    // them.
    #[test]
    fn normalisation_matches_python() {
        let cases: &[(&str, &str)] = &[
            ("The Eiffel Tower", "eiffel tower"),
            ("theater", "theater"),
            ("Theatre of the Absurd", "theatre of absurd"),
            ("an apple a day", "apple day"),
            ("A.B.C.", "abc"),
            ("a-b", "ab"),
            ("the_end", "theend"),
            ("_the_", ""),
            ("“quoted” — dash", "“quoted” — dash"),
            ("rock’n’roll", "rock’n’roll"),
            ("It's 3:00 p.m.", "its 300 pm"),
            ("Straße", "straße"),
            ("STRASSE", "strasse"),
            ("İstanbul", "i\u{307}stanbul"),
            ("ΟΔΟΣ ΣΟΦΟΣ.", "οδος σοφος"),
            ("ΟΔΟΣ'Α", "οδοσα"),
            ("a\u{301} the", "\u{301}"),
            ("thé", "thé"),
            ("a\u{a0}b\u{2003}c\u{1c}d\u{85}e\u{3000}f", "b c d e f"),
            ("x\u{200b}y", "x\u{200b}y"),
            ("the²", "the²"),
            ("½the", "½the"),
            ("the‿a", "‿"),
            ("  \t\n ", ""),
            (".", ""),
            ("The", ""),
            ("Ⅻthe", "ⅻthe"),
            ("ＴＨＥ", "ｔｈｅ"),
            ("the\u{200d}", "\u{200d}"),
        ];
        for (input, expected) in cases {
            assert_eq!(&normalize_answer(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn f1_and_em_match_python() {
        assert!(exact_match_score("the Eiffel tower!", "Eiffel Tower"));
        // Python: 'SS'.lower() == 'ss' != 'ß'.
        assert!(!exact_match_score("STRASSE", "straße"));
        assert_eq!(f1_score("STRASSE", "straße"), 0.0);
        assert_eq!(f1_score("", "."), 0.0);
        assert!(exact_match_score("", "."));
        assert_eq!(f1_score("a b c", "b c d e"), 0.6666666666666666);
        assert_eq!(f1_score("x x y", "x y y"), 0.6666666666666666);
        assert_eq!(f1_score("in Paris, France", "Paris"), 0.5);
        assert_eq!(f1_score("one two three", "three two one"), 1.0);
    }

    #[test]
    fn python_float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (100.0, "100.0"),
            (0.0, "0.0"),
            (100.0 * 3.0 / 10570.0, "0.02838221381267739"),
            (1.0 / 3.0, "0.3333333333333333"),
            (81.20151371807, "81.20151371807"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000012345, "1.2345e-05"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (1e22, "1e+22"),
            (-2.5, "-2.5"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (123.0, "123.0"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (x, expected) in cases {
            assert_eq!(&python_float_repr(*x), expected, "{x:e}");
        }
    }

    /// The per-question F1s average to the official score's F1 (over the questions answered),
    /// and take the best gold answer of each.
    #[test]
    fn per_question_f1s_average_to_the_score() {
        let json = br#"{"version": "1.1", "data": [{"title": "t", "paragraphs": [{
            "context": "Jane Austen wrote Emma in 1815.",
            "qas": [
                {"id": "a", "question": "Who?", "answers": [{"text": "Jane Austen", "answer_start": 0}]},
                {"id": "b", "question": "When?", "answers": [{"text": "1815", "answer_start": 26}, {"text": "in 1815", "answer_start": 23}]},
                {"id": "c", "question": "What?", "answers": [{"text": "Emma", "answer_start": 18}]}
            ]}]}]}"#;
        let dataset = super::super::data::parse_dataset("inline", json).unwrap();
        let predictions: HashMap<String, String> =
            [("a", "Austen"), ("b", "in 1815"), ("c", "a novel")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let per = f1_per_question(&dataset, &predictions);
        // "Austen" against "Jane Austen": precision 1, recall 1/2, F1 2/3.
        assert!((per["a"] - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(per["b"], 100.0);
        assert_eq!(per["c"], 0.0);
        let mean = per.values().sum::<f64>() / per.len() as f64;
        assert!((mean - evaluate(&dataset, &predictions).f1).abs() < 1e-9);
    }
}
