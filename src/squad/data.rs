//! Reading SQuAD v1.1 JSON files (plain or gzip-compressed) into plain data types.
//!
//! The file is parsed into a `serde_json::Value` first and then walked by hand rather than
//! deserialised straight into structs: a user with a hand-made or converted file needs to be
//! told *where* it is wrong (`data[3].paragraphs[7].qas[2]`, the article title and question
//! id), which serde's derived errors cannot say. Every such problem is an input error
//! ([`crate::error::input`]), so the CLI exits with code 3.
//!
//! Only SQuAD v1.1 is accepted: SQuAD 2.0 adds unanswerable questions, which the v1.1 metric
//! and decoding in this crate do not handle, so scoring a 2.0 file would give plausible but
//! wrong numbers. A 2.0 file is refused with a message saying so.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use anyhow::Result;
use serde_json::{Map, Value};

use crate::error::input;

/// A whole SQuAD file: `{"version": "1.1", "data": [article, ...]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The file's `version` field; always `"1.1"` for a dataset that was read successfully.
    pub version: String,
    pub articles: Vec<Article>,
}

/// One Wikipedia article: a title and its paragraphs.
#[derive(Debug, Clone, PartialEq)]
pub struct Article {
    pub title: String,
    pub paragraphs: Vec<Paragraph>,
}

/// One paragraph: the context text and the questions asked about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Paragraph {
    pub context: String,
    pub qas: Vec<Question>,
}

/// One question with its gold answers (at least one in SQuAD v1.1; three or more in dev).
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answers: Vec<Answer>,
}

/// A gold answer: its text and where it starts in the context.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    /// Start of the answer in the context, counted in Unicode code points (Python `str`
    /// indices), not bytes: SQuAD was made with Python.
    pub answer_start: usize,
}

/// One question seen together with its context: the unit that tokenisation, decoding and
/// scoring work on. Borrowed from a [`Dataset`] by [`Dataset::examples`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub question: &'a str,
    pub context: &'a str,
    pub answers: &'a [Answer],
}

/// A gold answer whose text is not found at its `answer_start` in the context.
///
/// Reported rather than refused: real files contain a few (the derived train file places
/// each answer at the first occurrence of its text, which is the wrong occurrence ~0.6% of
/// the time), and scoring does not use `answer_start` at all. Training labels built from a
/// wrong start are wrong, so callers should warn with the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerStartMismatch {
    pub question_id: String,
    /// Index of the answer in the question's `answers` list.
    pub answer_index: usize,
    pub answer_start: usize,
}

impl Dataset {
    /// Every question in file order (article, paragraph, question), with its context.
    ///
    /// This order is the one the official metric averages in, so code that produces
    /// per-question results should keep it.
    pub fn examples(&self) -> impl Iterator<Item = Example<'_>> + '_ {
        self.articles.iter().flat_map(|article| {
            article.paragraphs.iter().flat_map(move |paragraph| {
                paragraph.qas.iter().map(move |qa| Example {
                    id: &qa.id,
                    title: &article.title,
                    question: &qa.question,
                    context: &paragraph.context,
                    answers: &qa.answers,
                })
            })
        })
    }

    /// The dataset cut to its first `n` questions in file order (articles and paragraphs
    /// left without questions are dropped), so that a `--limit`ed evaluation is scored over
    /// exactly the questions it answered.
    pub fn first_questions(&self, n: usize) -> Dataset {
        let mut left = n;
        self.questions_where(|_| {
            let keep = left > 0;
            left = left.saturating_sub(1);
            keep
        })
    }

    /// The dataset cut to the questions `keep` accepts (asked in file order), articles and
    /// paragraphs left without questions dropped: scores then cover exactly those questions.
    pub fn questions_where(&self, mut keep: impl FnMut(&Question) -> bool) -> Dataset {
        let mut articles = Vec::new();
        for article in &self.articles {
            let paragraphs: Vec<Paragraph> = article
                .paragraphs
                .iter()
                .filter_map(|paragraph| {
                    let qas: Vec<Question> =
                        paragraph.qas.iter().filter(|q| keep(q)).cloned().collect();
                    (!qas.is_empty()).then(|| Paragraph {
                        context: paragraph.context.clone(),
                        qas,
                    })
                })
                .collect();
            if !paragraphs.is_empty() {
                articles.push(Article {
                    title: article.title.clone(),
                    paragraphs,
                });
            }
        }
        Dataset {
            version: self.version.clone(),
            articles,
        }
    }

    /// Number of questions (the denominator of the official averages).
    pub fn num_questions(&self) -> usize {
        self.articles
            .iter()
            .flat_map(|a| &a.paragraphs)
            .map(|p| p.qas.len())
            .sum()
    }

    /// Gold answers whose text does not appear at `answer_start` (code-point index) in the
    /// context, in file order.
    pub fn answer_start_mismatches(&self) -> Vec<AnswerStartMismatch> {
        let mut out = Vec::new();
        for paragraph in self.articles.iter().flat_map(|a| &a.paragraphs) {
            for qa in &paragraph.qas {
                for (answer_index, answer) in qa.answers.iter().enumerate() {
                    let found = char_to_byte(&paragraph.context, answer.answer_start)
                        .is_some_and(|b| paragraph.context[b..].starts_with(&answer.text));
                    if !found {
                        out.push(AnswerStartMismatch {
                            question_id: qa.id.clone(),
                            answer_index,
                            answer_start: answer.answer_start,
                        });
                    }
                }
            }
        }
        out
    }
}

/// Byte index of the code point at char index `char_idx` in `s`; `s.len()` for the end.
/// `None` past the end.
pub fn char_to_byte(s: &str, char_idx: usize) -> Option<usize> {
    if char_idx == 0 {
        return Some(0);
    }
    let mut count = 0;
    for (b, _) in s.char_indices() {
        if count == char_idx {
            return Some(b);
        }
        count += 1;
    }
    (count == char_idx).then_some(s.len())
}

/// The substring of `s` between code-point indices `start..end`, as Python's `s[start:end]`
/// for in-range indices; `None` if the range is reversed or past the end.
pub fn char_slice(s: &str, start: usize, end: usize) -> Option<&str> {
    if start > end {
        return None;
    }
    let b0 = char_to_byte(s, start)?;
    let b1 = b0 + char_to_byte(&s[b0..], end - start)?;
    Some(&s[b0..b1])
}

/// Read a SQuAD v1.1 file, plain JSON or gzip-compressed (recognised by its magic bytes, so
/// the file name does not matter).
///
/// Errors (all input errors, exit code 3) name the file and, for content problems, the JSON
/// path, the article title and the question id.
pub fn read_dataset(path: &Path) -> Result<Dataset> {
    let name = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| input(format!("{name}: cannot read the file: {e}")))?;
    let json = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| input(format!("{name}: not a valid gzip file: {e}")))?;
        out
    } else {
        bytes
    };
    parse_dataset(&name, &json)
}

/// Parse SQuAD v1.1 JSON text; `name` is used in error messages (usually the file path).
pub fn parse_dataset(name: &str, json: &[u8]) -> Result<Dataset> {
    let root: Value =
        serde_json::from_slice(json).map_err(|e| input(format!("{name}: not valid JSON: {e}")))?;
    let ctx = Ctx { name };
    let root = ctx.object(&root, &Loc::Root, "the top level")?;
    let version = ctx.string(root, "version", &Loc::Root)?;
    check_version(name, version)?;
    let data = ctx.array(ctx.field(root, "data", &Loc::Root)?, "data", &Loc::Root)?;
    let mut articles = Vec::with_capacity(data.len());
    let mut seen_ids: HashMap<String, (usize, usize, usize)> = HashMap::new();
    for (ai, article) in data.iter().enumerate() {
        let loc = Loc::Article { ai, title: None };
        let article = ctx.object(article, &loc, "an article")?;
        let title = ctx.string(article, "title", &loc)?.to_string();
        let loc = Loc::Article {
            ai,
            title: Some(&title),
        };
        let paragraphs_v =
            ctx.array(ctx.field(article, "paragraphs", &loc)?, "paragraphs", &loc)?;
        let mut paragraphs = Vec::with_capacity(paragraphs_v.len());
        for (pi, paragraph) in paragraphs_v.iter().enumerate() {
            let loc = Loc::Paragraph {
                ai,
                title: &title,
                pi,
            };
            let paragraph = ctx.object(paragraph, &loc, "a paragraph")?;
            let context = ctx.string(paragraph, "context", &loc)?.to_string();
            let qas_v = ctx.array(ctx.field(paragraph, "qas", &loc)?, "qas", &loc)?;
            let mut qas = Vec::with_capacity(qas_v.len());
            for (qi, qa) in qas_v.iter().enumerate() {
                let question = ctx.question(qa, ai, &title, pi, qi)?;
                if let Some(&(fa, fp, fq)) = seen_ids.get(&question.id) {
                    let loc = Loc::Question {
                        ai,
                        title: &title,
                        pi,
                        qi,
                        id: Some(&question.id),
                    };
                    return Err(input(format!(
                        "{name}: {loc}: question id {:?} already used at \
                         data[{fa}].paragraphs[{fp}].qas[{fq}]; ids must be unique because \
                         predictions are keyed by id",
                        question.id
                    )));
                }
                seen_ids.insert(question.id.clone(), (ai, pi, qi));
                qas.push(question);
            }
            paragraphs.push(Paragraph { context, qas });
        }
        articles.push(Article { title, paragraphs });
    }
    Ok(Dataset {
        version: version.to_string(),
        articles,
    })
}

/// SQuAD v1.1 only: a 2.0 file is refused as such, any other version as not 1.1.
fn check_version(name: &str, version: &str) -> Result<()> {
    if version == "1.1" {
        return Ok(());
    }
    let looks_v2 = version.trim_start_matches('v').starts_with('2');
    Err(if looks_v2 {
        input(format!(
            "{name}: this is a SQuAD 2.0 file (version {version:?}); bertbench handles \
             SQuAD v1.1 only (2.0's unanswerable questions need a different metric and \
             decoding)"
        ))
    } else {
        input(format!(
            "{name}: `version` is {version:?}; expected \"1.1\" (SQuAD v1.1)"
        ))
    })
}

/// Where in the file a value is, for error messages.
enum Loc<'a> {
    Root,
    Article {
        ai: usize,
        title: Option<&'a str>,
    },
    Paragraph {
        ai: usize,
        title: &'a str,
        pi: usize,
    },
    Question {
        ai: usize,
        title: &'a str,
        pi: usize,
        qi: usize,
        id: Option<&'a str>,
    },
    Answer(&'a Loc<'a>, usize),
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Root => write!(f, "top level"),
            Loc::Article { ai, title: None } => write!(f, "data[{ai}]"),
            Loc::Article { ai, title: Some(t) } => write!(f, "data[{ai}] (article {t:?})"),
            Loc::Paragraph { ai, title, pi } => {
                write!(f, "data[{ai}].paragraphs[{pi}] (article {title:?})")
            }
            Loc::Question {
                ai,
                title,
                pi,
                qi,
                id,
            } => {
                write!(
                    f,
                    "data[{ai}].paragraphs[{pi}].qas[{qi}] (article {title:?}"
                )?;
                match id {
                    Some(id) => write!(f, ", id {id:?})"),
                    None => write!(f, ")"),
                }
            }
            Loc::Answer(q, xi) => {
                if let Loc::Question {
                    ai,
                    title,
                    pi,
                    qi,
                    id,
                } = q
                {
                    write!(
                        f,
                        "data[{ai}].paragraphs[{pi}].qas[{qi}].answers[{xi}] (article {title:?}"
                    )?;
                    match id {
                        Some(id) => write!(f, ", id {id:?})"),
                        None => write!(f, ")"),
                    }
                } else {
                    write!(f, "{q}.answers[{xi}]")
                }
            }
        }
    }
}

/// Helpers that turn JSON shape problems into located input errors.
struct Ctx<'n> {
    name: &'n str,
}

impl Ctx<'_> {
    /// Question `qi` of paragraph `pi` of article `ai` (titled `title`): its id, text and
    /// gold answers (at least one; SQuAD 2.0's fields refused).
    fn question(
        &self,
        qa: &Value,
        ai: usize,
        title: &str,
        pi: usize,
        qi: usize,
    ) -> Result<Question> {
        let name = self.name;
        let mut loc = Loc::Question {
            ai,
            title,
            pi,
            qi,
            id: None,
        };
        let qa = self.object(qa, &loc, "a question")?;
        let id = self.string(qa, "id", &loc)?.to_string();
        if let Loc::Question { id: slot, .. } = &mut loc {
            *slot = Some(&id);
        }
        if qa.contains_key("is_impossible") || qa.contains_key("plausible_answers") {
            return Err(input(format!(
                "{name}: {loc}: has `is_impossible`/`plausible_answers`, so this is a \
                 SQuAD 2.0 file; bertbench handles SQuAD v1.1 only"
            )));
        }
        let question = self.string(qa, "question", &loc)?.to_string();
        let answers_v = self.array(self.field(qa, "answers", &loc)?, "answers", &loc)?;
        if answers_v.is_empty() {
            return Err(input(format!(
                "{name}: {loc}: `answers` is empty; every SQuAD v1.1 question has at \
                 least one gold answer"
            )));
        }
        let mut answers = Vec::with_capacity(answers_v.len());
        for (xi, answer) in answers_v.iter().enumerate() {
            let loc = Loc::Answer(&loc, xi);
            let answer = self.object(answer, &loc, "an answer")?;
            let text = self.string(answer, "text", &loc)?.to_string();
            let start_v = self.field(answer, "answer_start", &loc)?;
            let answer_start = start_v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    input(format!(
                        "{name}: {loc}: `answer_start` must be a non-negative integer, \
                         found {}",
                        describe(start_v)
                    ))
                })?;
            answers.push(Answer { text, answer_start });
        }
        Ok(Question {
            id,
            question,
            answers,
        })
    }

    fn field<'v>(&self, obj: &'v Map<String, Value>, key: &str, loc: &Loc) -> Result<&'v Value> {
        obj.get(key)
            .ok_or_else(|| input(format!("{}: {loc}: missing field `{key}`", self.name)))
    }

    fn string<'v>(&self, obj: &'v Map<String, Value>, key: &str, loc: &Loc) -> Result<&'v str> {
        let v = self.field(obj, key, loc)?;
        v.as_str().ok_or_else(|| {
            input(format!(
                "{}: {loc}: field `{key}` must be a string, found {}",
                self.name,
                describe(v)
            ))
        })
    }

    fn array<'v>(&self, v: &'v Value, key: &str, loc: &Loc) -> Result<&'v Vec<Value>> {
        v.as_array().ok_or_else(|| {
            input(format!(
                "{}: {loc}: field `{key}` must be a list, found {}",
                self.name,
                describe(v)
            ))
        })
    }

    fn object<'v>(&self, v: &'v Value, loc: &Loc, what: &str) -> Result<&'v Map<String, Value>> {
        v.as_object().ok_or_else(|| {
            input(format!(
                "{}: {loc}: expected {what} (a JSON object), found {}",
                self.name,
                describe(v)
            ))
        })
    }
}

/// A short description of a JSON value's kind for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => "a string".into(),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_questions_keeps_file_order() {
        let d = parse_dataset("dev.json", GOOD.as_bytes()).unwrap();
        let one = d.first_questions(1);
        assert_eq!(one.num_questions(), 1);
        assert_eq!(one.examples().next().unwrap().id, "q1");
        assert_eq!(d.first_questions(99), d);
    }

    fn err(json: &str) -> String {
        let e = parse_dataset("dev.json", json.as_bytes()).unwrap_err();
        assert_eq!(
            crate::error::exit_code(&e),
            crate::error::EXIT_BAD_INPUT,
            "{e:#}"
        );
        format!("{e:#}")
    }

    const GOOD: &str = r#"{"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Zoë went to Zürich in 1999.", "qas": [
            {"id": "q1", "question": "Where?", "answers": [
                {"text": "Zürich", "answer_start": 12}, {"text": "Zürich", "answer_start": 3}]},
            {"id": "q2", "question": "When?", "answers": [{"text": "1999", "answer_start": 22}]}
        ]}]}]}"#;

    #[test]
    fn reads_a_good_file_and_flattens_examples() {
        let d = parse_dataset("x", GOOD.as_bytes()).unwrap();
        assert_eq!(d.version, "1.1");
        assert_eq!(d.num_questions(), 2);
        let ex: Vec<_> = d.examples().collect();
        assert_eq!(ex[0].id, "q1");
        assert_eq!(ex[1].question, "When?");
        assert_eq!(ex[1].context, "Zoë went to Zürich in 1999.");
        assert_eq!(ex[0].answers.len(), 2);
        assert_eq!(ex[0].title, "T");
    }

    #[test]
    fn answer_start_is_counted_in_code_points() {
        let d = parse_dataset("x", GOOD.as_bytes()).unwrap();
        // Only the deliberately wrong start (3) is reported; 12 and 22 are code-point indices
        // that would be wrong as byte indices ("Zoë" and "Zürich" have 2-byte characters).
        assert_eq!(
            d.answer_start_mismatches(),
            vec![AnswerStartMismatch {
                question_id: "q1".into(),
                answer_index: 1,
                answer_start: 3
            }]
        );
    }

    #[test]
    fn char_slices_follow_python_indexing() {
        let s = "Zoë 🥐 café";
        assert_eq!(char_slice(s, 0, 3), Some("Zoë"));
        assert_eq!(char_slice(s, 4, 5), Some("🥐"));
        assert_eq!(char_slice(s, 6, 10), Some("café"));
        assert_eq!(char_slice(s, 10, 10), Some(""));
        assert_eq!(char_slice(s, 6, 11), None);
        assert_eq!(char_slice(s, 5, 4), None);
        assert_eq!(char_to_byte(s, 10), Some(s.len()));
        assert_eq!(char_to_byte(s, 11), None);
    }

    #[test]
    fn missing_field_names_file_path_title_and_id() {
        let m = err(
            r#"{"version": "1.1", "data": [{"title": "Normans", "paragraphs": [{"context": "c",
            "qas": [{"id": "5733be28", "question": "q"}]}]}]}"#,
        );
        assert_eq!(
            m,
            "dev.json: data[0].paragraphs[0].qas[0] (article \"Normans\", id \"5733be28\"): \
             missing field `answers`"
        );
    }

    #[test]
    fn wrong_types_are_located() {
        let m = err(
            r#"{"version": "1.1", "data": [{"title": "A", "paragraphs": []},
            {"title": "B", "paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q",
            "answers": [{"text": "c", "answer_start": -1}]}]}]}]}"#,
        );
        assert!(
            m.starts_with("dev.json: data[1].paragraphs[0].qas[0].answers[0] (article \"B\", id \"x\"): `answer_start` must be a non-negative integer"),
            "{m}"
        );
        let m = err(r#"{"version": "1.1", "data": [{"title": 7, "paragraphs": []}]}"#);
        assert_eq!(
            m,
            "dev.json: data[0]: field `title` must be a string, found number 7"
        );
        let m = err(r#"{"version": "1.1", "data": {}}"#);
        assert_eq!(
            m,
            "dev.json: top level: field `data` must be a list, found an object"
        );
    }

    #[test]
    fn malformed_json_names_the_file() {
        let m = err(r#"{"version": "1.1", "data": [}"#);
        assert!(m.starts_with("dev.json: not valid JSON: "), "{m}");
        assert!(m.contains("line 1"), "{m}");
    }

    #[test]
    fn squad_2_is_refused() {
        let m = err(r#"{"version": "v2.0", "data": []}"#);
        assert!(m.contains("SQuAD 2.0"), "{m}");
        assert!(m.contains("v1.1 only"), "{m}");
        // A 2.0-style question in a file that claims 1.1 is refused too.
        let m = err(
            r#"{"version": "1.1", "data": [{"title": "A", "paragraphs": [{"context": "c",
            "qas": [{"id": "x", "question": "q", "answers": [], "is_impossible": true}]}]}]}"#,
        );
        assert!(m.contains("qas[0]") && m.contains("SQuAD 2.0"), "{m}");
        let m = err(r#"{"version": "1.0", "data": []}"#);
        assert!(m.contains("expected \"1.1\""), "{m}");
        let m = err(r#"{"data": []}"#);
        assert_eq!(m, "dev.json: top level: missing field `version`");
    }

    #[test]
    fn empty_answers_and_duplicate_ids_are_refused() {
        let m = err(
            r#"{"version": "1.1", "data": [{"title": "A", "paragraphs": [{"context": "c",
            "qas": [{"id": "x", "question": "q", "answers": []}]}]}]}"#,
        );
        assert!(m.contains("`answers` is empty"), "{m}");
        let m = err(
            r#"{"version": "1.1", "data": [{"title": "A", "paragraphs": [{"context": "c",
            "qas": [{"id": "x", "question": "q", "answers": [{"text": "c", "answer_start": 0}]},
                    {"id": "x", "question": "q", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}"#,
        );
        assert!(m.contains("qas[1]") && m.contains("already used at"), "{m}");
    }
}
