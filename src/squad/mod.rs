//! SQuAD data, tokenisation into windows, answer decoding and the official v1.1 metric.
//!
//! The pieces talk through plain data types so that model code never needs to know about
//! JSON files or the tokenizer's internals:
//!
//! ```text
//! read_dataset(path) -> Dataset --examples()--> [Example]
//!   load_tokenizer(dir).features(&examples, &FeatureConfig) -> [Feature]  (model input + labels)
//!   model(Feature) -> start/end logits
//!   decode_predictions(&examples, &features, &starts, &ends, &DecodeConfig) -> [Prediction]
//!   evaluate(&dataset, &predictions) -> Score  (the official EM/F1)
//! ```

pub mod data;
pub(crate) mod decode;
pub(crate) mod download;
pub(crate) mod features;
pub(crate) mod metric;

pub use data::{read_dataset, Answer, Article, Dataset, Example, Paragraph, Question};
pub use decode::{
    decode_predictions, predictions_map, read_predictions, write_predictions, DecodeConfig,
    NbestEntry, Prediction,
};
pub use features::{load_tokenizer, tokenizer_path, Feature, FeatureConfig, QaTokenizer, Window};
pub use metric::{evaluate, exact_match_score, f1_score, normalize_answer, Score};
