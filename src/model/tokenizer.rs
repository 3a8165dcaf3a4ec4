//! Text <-> token ids: the `tokenizers` crate over a checkpoint's tokenizer.json, the Llama 4 chat
//! template (LLAMA4.md), and the `1,2,3` token-id lists the command line takes.
use crate::error::{Error, Result};
use std::path::Path;

/// `<|begin_of_text|>`.
pub const BEGIN_OF_TEXT: &str = "<|begin_of_text|>";

/// One user turn of the Llama 4 chat template, ending where the assistant's answer starts.
pub fn chat_prompt(user: &str) -> String {
    format!("{BEGIN_OF_TEXT}<|header_start|>user<|header_end|>\n\n{user}<|eot|><|header_start|>assistant<|header_end|>\n\n")
}

/// A checkpoint's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// `dir/tokenizer.json`, or `None` when the checkpoint has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Ok(None);
        }
        Self::from_file(&path).map(Some)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// Encodes text as is; special tokens written in the text (`<|eot|>`) become their ids.
    /// `add_special` lets the tokenizer's post-processor add its own (the begin-of-text token).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The chat-templated prompt for one user message.
    pub fn encode_chat(&self, user: &str) -> Result<Vec<u32>> {
        self.encode(&chat_prompt(user), false)
    }

    /// Ids to text, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    /// The id of a token string (a special token, say), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Parses `1,2,3` (spaces allowed) into token ids.
pub fn parse_token_ids(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>().map_err(|_| {
                Error::invalid(
                    "tokens",
                    format!("`{p}` is not a token id (expected e.g. 1,2,3)"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Err(Error::invalid("tokens", "no token ids given"));
    }
    Ok(ids)
}

/// A minimal word-level tokenizer.json for toy checkpoints and tests: ids 0-3 are
/// `<|begin_of_text|>`, `<|header_start|>`, `<|header_end|>`, `<|eot|>`, then `words` in order, then
/// `[UNK]`. Text splits into `\w+` runs and blank lines ("\n\n"); anything else is dropped.
pub fn word_level_tokenizer_json(words: &[&str]) -> String {
    let specials = [
        BEGIN_OF_TEXT,
        "<|header_start|>",
        "<|header_end|>",
        "<|eot|>",
    ];
    let entry = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let vocab: Vec<String> = specials
        .iter()
        .chain(words)
        .chain(&["[UNK]"])
        .enumerate()
        .map(|(i, w)| format!("{}: {i}", entry(w)))
        .collect();
    let added: Vec<String> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                r#"{{"id": {i}, "content": {}, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#,
                entry(s)
            )
        })
        .collect();
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{}],
          "normalizer": null,
          "pre_tokenizer": {{"type": "Split", "pattern": {{"Regex": "\n\n|\\w+"}}, "behavior": "Removed", "invert": true}},
          "post_processor": null, "decoder": null,
          "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        added.join(","),
        vocab.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_encodes_specials_as_ids() {
        let dir = tempfile::tempdir().unwrap();
        let words = ["hello", "world", "user", "assistant", "\n\n"];
        std::fs::write(
            dir.path().join("tokenizer.json"),
            word_level_tokenizer_json(&words),
        )
        .unwrap();
        let t = Tokenizer::from_dir(dir.path())
            .unwrap()
            .expect("tokenizer.json present");
        // bos, header_start, "user", header_end, "\n\n", "hello", "world", eot, header_start,
        // "assistant", header_end, "\n\n".
        assert_eq!(
            t.encode_chat("hello world").unwrap(),
            vec![0, 1, 6, 2, 8, 4, 5, 3, 1, 7, 2, 8]
        );
        assert_eq!(t.token_id("<|eot|>"), Some(3));
        assert_eq!(t.decode(&[0, 4, 5, 3]).unwrap(), "hello world");
    }

    #[test]
    fn missing_tokenizer_is_none_and_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Tokenizer::from_dir(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let e = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }

    #[test]
    fn token_id_lists() {
        assert_eq!(parse_token_ids("1,2, 3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_token_ids("7").unwrap(), vec![7]);
        assert!(parse_token_ids("1,x")
            .unwrap_err()
            .to_string()
            .contains("`x`"));
        assert!(parse_token_ids("-1").is_err());
        assert!(parse_token_ids(" , ").is_err());
    }
}
