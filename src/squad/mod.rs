//! SQuAD data, tokenisation into windows, answer decoding and the official v1.1 metric.

pub mod data;
pub mod decode;
pub mod features;
pub mod metric;

pub use data::{read_dataset, Answer, Article, Dataset, Example, Paragraph, Question};
pub use decode::read_predictions;
pub use features::{load_tokenizer, Feature, FeatureConfig, QaTokenizer, Window};
pub use metric::{evaluate, normalize_answer, Score};
