//! Resolving a model argument: local directory, local Hugging Face cache, then the Hub.
