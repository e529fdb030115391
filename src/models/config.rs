//! Reading the Hub's `config.json` as is, for the three families, into one [`ModelConfig`].
//!
//! Each family has its own field names on the Hub (DistilBERT says `dim`/`n_layers`, BERT says
//! `hidden_size`/`num_hidden_layers`), and transformers 4 and 5 spell some keys differently
//! (`torch_dtype` vs `dtype`, `position_embedding_type` present or omitted). The per-family raw
//! structs below copy transformers' defaults for absent keys, so a config reads here exactly as
//! `AutoConfig.from_pretrained` would read it.

use std::path::Path;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::input;

/// The model families bertbench implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelType {
    Bert,
    DistilBert,
    SqueezeBert,
}

impl ModelType {
    /// The `model_type` string used in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Bert => "bert",
            ModelType::DistilBert => "distilbert",
            ModelType::SqueezeBert => "squeezebert",
        }
    }

    /// The transformers class whose checkpoints (and tensor names) the QA model matches.
    pub fn qa_class(self) -> &'static str {
        match self {
            ModelType::Bert => "BertForQuestionAnswering",
            ModelType::DistilBert => "DistilBertForQuestionAnswering",
            ModelType::SqueezeBert => "SqueezeBertForQuestionAnswering",
        }
    }

    /// Prefix of the base model's tensors inside a task checkpoint (`bert.embeddings...`).
    pub fn base_prefix(self) -> &'static str {
        match self {
            ModelType::Bert => "bert",
            ModelType::DistilBert => "distilbert",
            ModelType::SqueezeBert => "transformer",
        }
    }
}

/// Activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// transformers' `"gelu"`: the exact erf form.
    Gelu,
    /// `"gelu_new"` / `"gelu_pytorch_tanh"` / `"gelu_fast"`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// SqueezeBERT's grouped-convolution group counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqueezeGroups {
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub post_attention: usize,
    pub intermediate: usize,
    pub output: usize,
}

/// One model configuration, whatever the family spelled it as.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    /// 0 for DistilBERT, which has no token-type embeddings.
    pub type_vocab_size: usize,
    /// Epsilon of the embedding LayerNorm (`layer_norm_eps`; DistilBERT hard-codes 1e-12).
    pub embedding_layer_norm_eps: f64,
    /// Epsilon of the encoder LayerNorms (SqueezeBERT and DistilBERT hard-code 1e-12).
    pub encoder_layer_norm_eps: f64,
    pub initializer_range: f64,
    pub pad_token_id: usize,
    /// DistilBERT: position table is the fixed sinusoid rather than learned.
    pub sinusoidal_pos_embds: bool,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    /// Dropout before `qa_outputs` (DistilBERT only; 0 for the others, as in transformers).
    pub qa_dropout: f64,
    pub squeeze_groups: Option<SqueezeGroups>,
    /// `torch_dtype` (transformers 4) or `dtype` (transformers 5), if the file names one.
    pub torch_dtype: Option<String>,
    /// The JSON this was read from, kept so a saved checkpoint writes the same keys back.
    pub raw: serde_json::Value,
}

impl ModelConfig {
    /// Reads `config.json` from a file; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| input(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses a config from JSON text; `origin` names it in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| input(format!("{origin}: not valid JSON: {e}")))?;
        Self::from_value(raw, origin)
    }

    /// Parses a config from an already-decoded JSON value.
    pub fn from_value(raw: serde_json::Value, origin: &str) -> Result<Self> {
        let Some(obj) = raw.as_object() else {
            return Err(input(format!("{origin}: expected a JSON object")));
        };
        let model_type = match obj.get("model_type") {
            None => {
                return Err(input(format!(
                    "{origin}: missing field `model_type` (expected \"bert\", \"distilbert\" or \"squeezebert\")"
                )))
            }
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(input(format!(
                    "{origin}: field `model_type` must be a string, found {other}"
                )))
            }
        };
        let torch_dtype = ["dtype", "torch_dtype"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(|v| v.as_str()).map(str::to_string));
        let mut config = match model_type {
            "bert" => parse::<BertRaw>(&raw, origin)?.into_config(origin)?,
            "distilbert" => parse::<DistilBertRaw>(&raw, origin)?.into_config(origin)?,
            "squeezebert" => parse::<SqueezeBertRaw>(&raw, origin)?.into_config(origin)?,
            other => {
                return Err(input(format!(
                    "{origin}: model_type `{other}` is not supported; bertbench runs \"bert\", \"distilbert\" and \"squeezebert\""
                )))
            }
        };
        config.torch_dtype = torch_dtype;
        config.raw = raw;
        config.validate(origin)?;
        Ok(config)
    }

    /// A built-in config by Hub name (no network), e.g. `bert-base-uncased`.
    pub fn builtin(name: &str) -> Option<Self> {
        let text = builtin_json(name)?;
        Some(Self::from_json_str(text, name).expect("built-in configs are valid"))
    }

    /// Attention head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_heads),
            ("num_hidden_layers", self.num_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(input(format!(
                    "{origin}: `{field}` must be positive, found 0"
                )));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(input(format!(
                "{origin}: hidden size {} is not a multiple of the number of attention heads {}",
                self.hidden_size, self.num_heads
            )));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(input(format!(
                "{origin}: `pad_token_id` {} is outside the vocabulary (vocab_size {})",
                self.pad_token_id, self.vocab_size
            )));
        }
        if let Some(g) = &self.squeeze_groups {
            let h = self.hidden_size;
            let i = self.intermediate_size;
            let checks = [
                ("q_groups", g.q, h, h),
                ("k_groups", g.k, h, h),
                ("v_groups", g.v, h, h),
                ("post_attention_groups", g.post_attention, h, h),
                ("intermediate_groups", g.intermediate, h, i),
                ("output_groups", g.output, i, h),
            ];
            for (field, groups, cin, cout) in checks {
                if groups == 0 || cin % groups != 0 || cout % groups != 0 {
                    return Err(input(format!(
                        "{origin}: `{field}` = {groups} must divide both {cin} input and {cout} output channels"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Deserialises with the failing field's path in the message.
fn parse<T: DeserializeOwned>(raw: &serde_json::Value, origin: &str) -> Result<T> {
    serde_path_to_error::deserialize(raw)
        .map_err(|e| input(format!("{origin}: field `{}`: {}", e.path(), e.inner())))
}

fn activation(name: &str, field: &str, origin: &str) -> Result<Activation> {
    Activation::parse(name).ok_or_else(|| {
        input(format!(
            "{origin}: `{field}` = \"{name}\" is not supported; expected \"gelu\", \"gelu_new\" (or \"gelu_pytorch_tanh\") or \"relu\""
        ))
    })
}

// Defaults below are transformers' own (BertConfig, DistilBertConfig, SqueezeBertConfig).
fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_act() -> String {
    "gelu".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_max_pos() -> usize {
    512
}
fn d_type_vocab() -> usize {
    2
}
fn d_init_range() -> f64 {
    0.02
}
fn d_ln_eps() -> f64 {
    1e-12
}
fn d_distil_layers() -> usize {
    6
}
fn d_four() -> usize {
    4
}
fn d_one() -> usize {
    1
}
fn d_qa_dropout() -> f64 {
    0.1
}

#[derive(Deserialize)]
struct BertRaw {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_intermediate")]
    intermediate_size: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "d_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "d_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "d_init_range")]
    initializer_range: f64,
    #[serde(default = "d_ln_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<usize>,
    /// transformers 5 omits the key when it is "absolute".
    #[serde(default)]
    position_embedding_type: Option<String>,
}

impl BertRaw {
    fn into_config(self, origin: &str) -> Result<ModelConfig> {
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => {}
            Some(other) => {
                return Err(input(format!(
                    "{origin}: `position_embedding_type` = \"{other}\" is not supported; only \"absolute\" is"
                )))
            }
        }
        Ok(ModelConfig {
            model_type: ModelType::Bert,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            activation: activation(&self.hidden_act, "hidden_act", origin)?,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            embedding_layer_norm_eps: self.layer_norm_eps,
            encoder_layer_norm_eps: self.layer_norm_eps,
            initializer_range: self.initializer_range,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            sinusoidal_pos_embds: false,
            hidden_dropout: self.hidden_dropout_prob,
            attention_dropout: self.attention_probs_dropout_prob,
            qa_dropout: 0.0,
            squeeze_groups: None,
            torch_dtype: None,
            raw: serde_json::Value::Null,
        })
    }
}

#[derive(Deserialize)]
struct DistilBertRaw {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    sinusoidal_pos_embds: bool,
    #[serde(default = "d_distil_layers")]
    n_layers: usize,
    #[serde(default = "d_heads")]
    n_heads: usize,
    #[serde(default = "d_hidden")]
    dim: usize,
    #[serde(default = "d_intermediate")]
    hidden_dim: usize,
    #[serde(default = "d_dropout")]
    dropout: f64,
    #[serde(default = "d_dropout")]
    attention_dropout: f64,
    #[serde(default = "d_act")]
    activation: String,
    #[serde(default = "d_init_range")]
    initializer_range: f64,
    #[serde(default = "d_qa_dropout")]
    qa_dropout: f64,
    #[serde(default)]
    pad_token_id: Option<usize>,
}

impl DistilBertRaw {
    fn into_config(self, origin: &str) -> Result<ModelConfig> {
        Ok(ModelConfig {
            model_type: ModelType::DistilBert,
            vocab_size: self.vocab_size,
            hidden_size: self.dim,
            num_layers: self.n_layers,
            num_heads: self.n_heads,
            intermediate_size: self.hidden_dim,
            activation: activation(&self.activation, "activation", origin)?,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            // DistilBERT's LayerNorms use eps=1e-12 in the code, whatever the config says.
            embedding_layer_norm_eps: 1e-12,
            encoder_layer_norm_eps: 1e-12,
            initializer_range: self.initializer_range,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            sinusoidal_pos_embds: self.sinusoidal_pos_embds,
            hidden_dropout: self.dropout,
            attention_dropout: self.attention_dropout,
            qa_dropout: self.qa_dropout,
            squeeze_groups: None,
            torch_dtype: None,
            raw: serde_json::Value::Null,
        })
    }
}

/// SqueezeBERT's config is BERT's plus the embedding size and the group counts.
#[derive(Deserialize)]
struct SqueezeBertRaw {
    #[serde(flatten)]
    bert: BertRaw,
    #[serde(default)]
    embedding_size: Option<usize>,
    #[serde(default = "d_four")]
    q_groups: usize,
    #[serde(default = "d_four")]
    k_groups: usize,
    #[serde(default = "d_four")]
    v_groups: usize,
    #[serde(default = "d_one")]
    post_attention_groups: usize,
    #[serde(default = "d_four")]
    intermediate_groups: usize,
    #[serde(default = "d_four")]
    output_groups: usize,
}

impl SqueezeBertRaw {
    fn into_config(self, origin: &str) -> Result<ModelConfig> {
        if let Some(e) = self.embedding_size {
            if e != self.bert.hidden_size {
                return Err(input(format!(
                    "{origin}: `embedding_size` {e} differs from `hidden_size` {}; SqueezeBERT requires them equal",
                    self.bert.hidden_size
                )));
            }
        }
        Ok(ModelConfig {
            model_type: ModelType::SqueezeBert,
            // SqueezeBertLayerNorm in the encoder uses eps=1e-12 from the code.
            encoder_layer_norm_eps: 1e-12,
            squeeze_groups: Some(SqueezeGroups {
                q: self.q_groups,
                k: self.k_groups,
                v: self.v_groups,
                post_attention: self.post_attention_groups,
                intermediate: self.intermediate_groups,
                output: self.output_groups,
            }),
            ..self.bert.into_config(origin)?
        })
    }
}

/// The Hub names of the built-in configs, canonical spelling first.
pub const BUILTIN_MODELS: [&str; 3] = [
    "bert-base-uncased",
    "distilbert-base-uncased",
    "squeezebert/squeezebert-uncased",
];

/// The `config.json` of each built-in model as published on the Hub, so benchmarks on random
/// weights need no network. Organisation-qualified aliases the Hub redirects are accepted too.
fn builtin_json(name: &str) -> Option<&'static str> {
    match name {
        "bert-base-uncased" | "google-bert/bert-base-uncased" => Some(BERT_BASE_UNCASED),
        "distilbert-base-uncased" | "distilbert/distilbert-base-uncased" => {
            Some(DISTILBERT_BASE_UNCASED)
        }
        "squeezebert/squeezebert-uncased" | "squeezebert-uncased" => Some(SQUEEZEBERT_UNCASED),
        _ => None,
    }
}

const BERT_BASE_UNCASED: &str = r#"{
  "architectures": ["BertForMaskedLM"],
  "attention_probs_dropout_prob": 0.1,
  "gradient_checkpointing": false,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": 768,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-12,
  "max_position_embeddings": 512,
  "model_type": "bert",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 0,
  "position_embedding_type": "absolute",
  "transformers_version": "4.6.0.dev0",
  "type_vocab_size": 2,
  "use_cache": true,
  "vocab_size": 30522
}"#;

const DISTILBERT_BASE_UNCASED: &str = r#"{
  "activation": "gelu",
  "architectures": ["DistilBertForMaskedLM"],
  "attention_dropout": 0.1,
  "dim": 768,
  "dropout": 0.1,
  "hidden_dim": 3072,
  "initializer_range": 0.02,
  "max_position_embeddings": 512,
  "model_type": "distilbert",
  "n_heads": 12,
  "n_layers": 6,
  "pad_token_id": 0,
  "qa_dropout": 0.1,
  "seq_classif_dropout": 0.2,
  "sinusoidal_pos_embds": false,
  "tie_weights_": true,
  "transformers_version": "4.10.0.dev0",
  "vocab_size": 30522
}"#;

const SQUEEZEBERT_UNCASED: &str = r#"{
  "architectures": ["SqueezeBertForMaskedLM"],
  "attention_probs_dropout_prob": 0.1,
  "embedding_size": 768,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": 768,
  "initializer_range": 0.02,
  "intermediate_groups": 4,
  "intermediate_size": 3072,
  "k_groups": 4,
  "layer_norm_eps": 1e-12,
  "max_position_embeddings": 512,
  "model_type": "squeezebert",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "output_groups": 4,
  "pad_token_id": 0,
  "post_attention_groups": 1,
  "q_groups": 4,
  "type_vocab_size": 2,
  "v_groups": 4,
  "vocab_size": 30528
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_with_their_families_values() {
        let bert = ModelConfig::builtin("bert-base-uncased").unwrap();
        assert_eq!(bert.model_type, ModelType::Bert);
        assert_eq!(
            (bert.hidden_size, bert.num_layers, bert.num_heads),
            (768, 12, 12)
        );
        let distil = ModelConfig::builtin("distilbert/distilbert-base-uncased").unwrap();
        assert_eq!(distil.model_type, ModelType::DistilBert);
        assert_eq!((distil.num_layers, distil.type_vocab_size), (6, 0));
        assert_eq!(distil.qa_dropout, 0.1);
        let sq = ModelConfig::builtin("squeezebert/squeezebert-uncased").unwrap();
        assert_eq!(sq.vocab_size, 30528);
        let g = sq.squeeze_groups.unwrap();
        assert_eq!(
            (g.q, g.k, g.v, g.post_attention, g.intermediate, g.output),
            (4, 4, 4, 1, 4, 4)
        );
        assert!(ModelConfig::builtin("roberta-base").is_none());
    }

    #[test]
    fn transformers_4_and_5_spellings() {
        let v4 = r#"{"model_type":"bert","torch_dtype":"float32","position_embedding_type":"absolute","hidden_size":64,"num_attention_heads":4}"#;
        let v5 =
            r#"{"model_type":"bert","dtype":"float32","hidden_size":64,"num_attention_heads":4}"#;
        let a = ModelConfig::from_json_str(v4, "v4").unwrap();
        let b = ModelConfig::from_json_str(v5, "v5").unwrap();
        assert_eq!(a.torch_dtype.as_deref(), Some("float32"));
        assert_eq!(b.torch_dtype.as_deref(), Some("float32"));
        assert_eq!(a.hidden_size, b.hidden_size);
    }

    #[test]
    fn activations_map_to_the_right_form() {
        for (name, act) in [
            ("gelu", Activation::Gelu),
            ("gelu_new", Activation::GeluTanh),
            ("gelu_pytorch_tanh", Activation::GeluTanh),
            ("relu", Activation::Relu),
        ] {
            let bert = format!(r#"{{"model_type":"bert","hidden_act":"{name}"}}"#);
            assert_eq!(
                ModelConfig::from_json_str(&bert, "t").unwrap().activation,
                act
            );
            let distil = format!(r#"{{"model_type":"distilbert","activation":"{name}"}}"#);
            assert_eq!(
                ModelConfig::from_json_str(&distil, "t").unwrap().activation,
                act
            );
        }
        let err =
            ModelConfig::from_json_str(r#"{"model_type":"bert","hidden_act":"swish"}"#, "c.json")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("c.json") && err.contains("hidden_act") && err.contains("swish"),
            "{err}"
        );
    }

    #[test]
    fn distilbert_field_names() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"distilbert","dim":64,"n_layers":2,"n_heads":4,"hidden_dim":128,"sinusoidal_pos_embds":true}"#,
            "t",
        )
        .unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.intermediate_size
            ),
            (64, 2, 4, 128)
        );
        assert!(c.sinusoidal_pos_embds);
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = |text: &str| {
            ModelConfig::from_json_str(text, "x/config.json")
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"model_type":"roberta"}"#);
        assert!(e.contains("x/config.json") && e.contains("roberta"), "{e}");
        let e = err(r#"{"hidden_size":64}"#);
        assert!(e.contains("model_type"), "{e}");
        let e = err(r#"{"model_type":"bert","hidden_size":"big"}"#);
        assert!(
            e.contains("hidden_size") && e.contains("x/config.json"),
            "{e}"
        );
        let e = err(r#"{"model_type":"bert","hidden_size":100,"num_attention_heads":12}"#);
        assert!(e.contains("multiple"), "{e}");
        let e = err(
            r#"{"model_type":"squeezebert","hidden_size":64,"num_attention_heads":4,"q_groups":3}"#,
        );
        assert!(e.contains("q_groups"), "{e}");
        let e = err(r#"{"model_type":"bert","position_embedding_type":"relative_key"}"#);
        assert!(e.contains("relative_key"), "{e}");
        let e = err("{not json");
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
