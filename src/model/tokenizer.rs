//! The manifest's `tokenizer` section: the id layout the text encoder was exported with. Plain data;
//! the tokenizer itself lives in the pipeline's `tokenizer` module.

use serde::{Deserialize, Serialize};

/// The manifest's `tokenizer` section.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct TokenizerConfig {
    /// Length of every id sequence, start and end markers included (77 for CLIP).
    pub max_length: usize,
    /// Id that fills the sequence after the end marker.
    pub pad_id: i64,
    /// Id of `<start_of_text>`.
    pub bos_id: i64,
    /// Id of `<end_of_text>`.
    pub eos_id: i64,
    /// The literal placeholder of the learned identity token, `<new1>`.
    pub new_token: String,
    /// Its id, one past CLIP's vocabulary.
    pub new_token_id: i64,
}
