//! Prompt text to the text encoder's `input_ids`: CLIP byte-level BPE (the vocabulary ships inside
//! `instant-clip-tokenizer`, nothing is downloaded) plus the added identity token `<new1>`, laid
//! out as CONTRACT.md ("Pipeline conventions") says and as open_clip's `SimpleTokenizer` does on the
//! Python side.

use instant_clip_tokenizer::{Token, Tokenizer};

/// Why a prompt could not be tokenized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    /// The prompt is longer than [`MAX_PROMPT_BYTES`]; only its first tokens would be used anyway,
    /// and BPE on one very long word costs quadratic time.
    #[error("prompt is {bytes} bytes, over the limit of {max} bytes")]
    PromptTooLong { bytes: usize, max: usize },
    /// A manifest whose tokenizer section does not fit this vocabulary or layout.
    #[error("tokenizer config is invalid: {0}")]
    InvalidConfig(String),
}

/// Longest prompt accepted, in UTF-8 bytes (about ten times what 75 tokens can hold).
pub const MAX_PROMPT_BYTES: usize = 4096;

pub use crate::model::tokenizer::TokenizerConfig;

/// CLIP's tokenizer with the manifest's layout. Building one parses the BPE merges (tens of
/// milliseconds): build it once per model and share it.
pub struct PromptTokenizer {
    bpe: Tokenizer,
    config: TokenizerConfig,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// A tokenizer for `config`. The config is checked by [`PromptTokenizer::validate`] and, again,
    /// by every [`PromptTokenizer::encode`], so a bad one fails the jobs with a clear message.
    pub fn new(config: TokenizerConfig) -> Self {
        Self {
            bpe: Tokenizer::new(),
            config,
        }
    }

    /// The layout this tokenizer produces.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// Checks the config against the bundled vocabulary: room for the two markers, the markers'
    /// ids, and an added token that is non-empty and outside the BPE vocabulary.
    pub fn validate(&self) -> Result<(), TokenizerError> {
        let c = &self.config;
        let invalid = |why: String| Err(TokenizerError::InvalidConfig(why));
        let sot = i64::from(self.bpe.start_of_text().to_u16());
        let eot = i64::from(self.bpe.end_of_text().to_u16());
        if c.max_length < 2 {
            return invalid(format!(
                "max_length {} leaves no room for bos and eos",
                c.max_length
            ));
        }
        if c.bos_id != sot || c.eos_id != eot {
            return invalid(format!(
                "bos/eos ids {}/{} are not the CLIP vocabulary's {sot}/{eot}",
                c.bos_id, c.eos_id
            ));
        }
        if c.new_token.trim().is_empty() {
            return invalid("new_token is empty".to_owned());
        }
        if c.new_token_id <= eot {
            return invalid(format!(
                "new_token_id {} collides with the CLIP vocabulary (ids 0..={eot})",
                c.new_token_id
            ));
        }
        Ok(())
    }

    /// The `max_length` ids of `text`: every exact (case-sensitive) `new_token` becomes
    /// `new_token_id`, the pieces between are lower-cased, whitespace-collapsed and BPE-encoded, then
    /// `[bos] + ids[..max_length - 2] + [eos]`, padded with `pad_id`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        self.validate()?;
        if text.len() > MAX_PROMPT_BYTES {
            return Err(TokenizerError::PromptTooLong {
                bytes: text.len(),
                max: MAX_PROMPT_BYTES,
            });
        }
        let c = &self.config;
        // NOTE: the added token is matched in the raw text, case-sensitively, before anything is
        // lower-cased: HF's CLIPTokenizer does so with a token added by `add_tokens(["<new1>"])`
        // (the paper's tokenizer), and so does pva.tokenizer. Only the exact `<new1>` is the identity
        // token; `<NEW1>` is ordinary text ("<", "new", "1", ">"). open_clip also runs ftfy.fix_text
        // (NFC, mojibake repair) and html.unescape on each piece; for well-formed text without HTML
        // entities the two agree.
        let body_limit = c.max_length - 2;
        let mut body: Vec<i64> = Vec::with_capacity(body_limit);
        let mut pieces: Vec<Token> = Vec::new();
        for (i, piece) in text.split(c.new_token.as_str()).enumerate() {
            if i > 0 {
                body.push(c.new_token_id);
            }
            pieces.clear();
            self.bpe
                .encode(&collapse_whitespace(&piece.to_lowercase()), &mut pieces);
            body.extend(pieces.iter().map(|t| i64::from(t.to_u16())));
            if body.len() >= body_limit {
                break;
            }
        }
        body.truncate(body_limit);
        let mut ids = Vec::with_capacity(c.max_length);
        ids.push(c.bos_id);
        ids.extend(body);
        ids.push(c.eos_id);
        ids.resize(c.max_length, c.pad_id);
        Ok(ids)
    }

    /// The prompt the model sees: `template` with `{prompt}` replaced by `prompt` (once, so text
    /// in the prompt is never substituted again), whitespace runs collapsed to one space and the
    /// ends trimmed. An empty prompt (nothing but whitespace) also drops the commas and whitespace
    /// just before `{prompt}`: `"photo of a <new1> person, {prompt}"` gives the paper's plain
    /// `"photo of a <new1> person"`, `"a <new1> person {prompt}"` gives `"a <new1> person"`.
    pub fn personalized(&self, template: &str, prompt: &str) -> String {
        if prompt.split_whitespace().next().is_none() {
            let (head, tail) = template.split_once("{prompt}").unwrap_or((template, ""));
            let head = head.trim_end_matches(|c: char| c == ',' || c.is_whitespace());
            return collapse_whitespace(&format!("{head} {tail}"));
        }
        collapse_whitespace(&template.replace("{prompt}", prompt))
    }
}

/// Runs of whitespace to one space, no leading or trailing whitespace.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn config() -> TokenizerConfig {
        TokenizerConfig {
            max_length: 77,
            pad_id: 0,
            bos_id: 49406,
            eos_id: 49407,
            new_token: "<new1>".to_owned(),
            new_token_id: 49408,
        }
    }

    fn tokenizer() -> &'static PromptTokenizer {
        static TOKENIZER: OnceLock<PromptTokenizer> = OnceLock::new();
        TOKENIZER.get_or_init(|| PromptTokenizer::new(config()))
    }

    /// `ids` followed by the padding to 77.
    fn padded(ids: &[i64]) -> Vec<i64> {
        let mut v = ids.to_vec();
        v.resize(77, 0);
        v
    }

    // Expected ids: open_clip_torch 3.3.0's SimpleTokenizer(additional_special_tokens=["<new1>"]),
    // `tok(text, context_length=77)`, trailing zeros dropped.
    #[test]
    fn matches_open_clip_on_plain_prompts() {
        let cases: [(&str, &[i64]); 4] = [
            ("", &[49406, 49407]),
            (
                "a photo of a person",
                &[49406, 320, 1125, 539, 320, 2533, 49407],
            ),
            (
                "a <new1> person   with\tmany\n spaces",
                &[49406, 320, 49408, 2533, 593, 1346, 9006, 49407],
            ),
            (
                "a <new1> person at a café 😀",
                &[49406, 320, 49408, 2533, 536, 320, 15304, 7334, 49407],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(tokenizer().encode(text).unwrap(), padded(want), "{text:?}");
        }
    }

    #[test]
    fn matches_open_clip_on_new_token_case_and_punctuation() {
        let cases: [(&str, &[i64]); 5] = [
            (
                "a <new1> person smiling",
                &[49406, 320, 49408, 2533, 9200, 49407],
            ),
            ("<new1>", &[49406, 49408, 49407]),
            ("x<new1>y", &[49406, 343, 49408, 344, 49407]),
            (
                "A <new1> Person WITH Sunglasses, smiling!!",
                &[49406, 320, 49408, 2533, 593, 12906, 267, 9200, 748, 49407],
            ),
            (
                "it's a <new1> person's face, isn't it?",
                &[
                    49406, 585, 568, 320, 49408, 2533, 568, 1710, 267, 2923, 713, 585, 286, 49407,
                ],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(tokenizer().encode(text).unwrap(), padded(want), "{text:?}");
        }
        let text = "a <new1> person, wearing a hat; looking left... (close-up) 4k";
        let want = [
            49406, 320, 49408, 2533, 267, 3309, 320, 3801, 282, 1312, 1823, 678, 263, 2660, 268,
            705, 264, 275, 330, 49407,
        ];
        assert_eq!(tokenizer().encode(text).unwrap(), padded(&want));
    }

    // Expected ids: HF's CLIPTokenizer after `add_tokens(["<new1>"])` (the paper's tokenizer) and
    // pva.tokenizer: the added token is matched case-sensitively before the BPE lower-cases, so
    // `<NEW1>` or `<New1>` is plain text, BPE "<", "new", "1", ">" (open_clip: 283, 686, 272, 285).
    #[test]
    fn only_the_exact_new_token_is_the_added_token() {
        let cases: [(&str, &[i64]); 4] = [
            (
                "a <NEW1> person",
                &[49406, 320, 283, 686, 272, 285, 2533, 49407],
            ),
            ("<New1>", &[49406, 283, 686, 272, 285, 49407]),
            (
                "a <new1> person like <NEW1>",
                &[49406, 320, 49408, 2533, 789, 283, 686, 272, 285, 49407],
            ),
            // Text around the token keeps its own case rules: "A" -> "a".
            ("A<new1>B", &[49406, 320, 49408, 321, 49407]),
        ];
        for (text, want) in cases {
            assert_eq!(tokenizer().encode(text).unwrap(), padded(want), "{text:?}");
        }
    }

    #[test]
    fn long_prompts_are_truncated_to_75_tokens_plus_markers() {
        let sentence = "a very detailed photograph of a smiling person";
        let text = [sentence; 12].join(" ");
        // open_clip: 8 BPE ids per sentence, cut after 75.
        let per_sentence = [320, 1070, 12609, 8853, 539, 320, 9200, 2533];
        let mut want = vec![49406];
        want.extend(per_sentence.iter().cycle().take(75));
        want.push(49407);
        let ids = tokenizer().encode(&text).unwrap();
        assert_eq!(ids, want);

        let text = format!("a <new1> person {}", ["with red hair"; 30].join(" "));
        let mut want = vec![49406, 320, 49408, 2533];
        want.extend([593, 736, 2225].iter().cycle().take(72));
        want.push(49407);
        assert_eq!(tokenizer().encode(&text).unwrap(), want);
    }

    #[test]
    fn layout_follows_the_config() {
        let short = PromptTokenizer::new(TokenizerConfig {
            max_length: 6,
            pad_id: -1,
            new_token: "<me>".to_owned(),
            new_token_id: 50000,
            ..config()
        });
        assert_eq!(
            short.encode("<me> smiling").unwrap(),
            vec![49406, 50000, 9200, 49407, -1, -1]
        );
        assert_eq!(
            short.encode("a photo of a person").unwrap(),
            vec![49406, 320, 1125, 539, 320, 49407]
        );
        let minimal = PromptTokenizer::new(TokenizerConfig {
            max_length: 2,
            ..config()
        });
        assert_eq!(minimal.encode("anything").unwrap(), vec![49406, 49407]);
    }

    #[test]
    fn bad_configs_and_prompts_are_errors() {
        let bad = [
            TokenizerConfig {
                max_length: 1,
                ..config()
            },
            TokenizerConfig {
                bos_id: 1,
                ..config()
            },
            TokenizerConfig {
                new_token: " ".to_owned(),
                ..config()
            },
            TokenizerConfig {
                new_token_id: 320,
                ..config()
            },
        ];
        for c in bad {
            let t = PromptTokenizer::new(c.clone());
            assert!(
                matches!(t.encode("a"), Err(TokenizerError::InvalidConfig(_))),
                "{c:?}"
            );
        }
        assert!(tokenizer().validate().is_ok());
        let long = "a".repeat(MAX_PROMPT_BYTES + 1);
        assert_eq!(
            tokenizer().encode(&long),
            Err(TokenizerError::PromptTooLong {
                bytes: MAX_PROMPT_BYTES + 1,
                max: MAX_PROMPT_BYTES
            })
        );
    }

    #[test]
    fn personalized_substitutes_and_collapses() {
        let t = tokenizer();
        assert_eq!(
            t.personalized("a <new1> person {prompt}", "  with   sunglasses \n"),
            "a <new1> person with sunglasses"
        );
        assert_eq!(
            t.personalized("a <new1> person {prompt}", ""),
            "a <new1> person"
        );
        // The paper's template: the comma goes with an empty prompt.
        let paper = "photo of a <new1> person, {prompt}";
        assert_eq!(
            t.personalized(paper, " has  beard"),
            "photo of a <new1> person, has beard"
        );
        for empty in ["", "  \t\n"] {
            assert_eq!(t.personalized(paper, empty), "photo of a <new1> person");
        }
        assert_eq!(
            t.personalized("a <new1> person ,, {prompt} today", ""),
            "a <new1> person today"
        );
        // The prompt's own braces are left alone.
        assert_eq!(
            t.personalized("{prompt}, photo", "say {prompt}"),
            "say {prompt}, photo"
        );
    }

    #[test]
    fn config_round_trips_the_manifest_json() {
        let json = r#"{"max_length": 77, "pad_id": 0, "bos_id": 49406, "eos_id": 49407,
                       "new_token": "<new1>", "new_token_id": 49408}"#;
        let parsed: TokenizerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, config());
        let back: TokenizerConfig =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(back, parsed);
    }
}
