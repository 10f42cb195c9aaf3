//! `odmoe tokenize` and `odmoe detokenize`: the model's own tokenizer, as JSON.
//! Output contracts: `{"ids": [...]}` and `{"text": "..."}`.

use std::path::Path;

use odmoe::gguf::GgufModel;
use odmoe::tokenizer::Tokenizer;

fn tokenizer(model: &Path) -> Result<Tokenizer, Box<dyn std::error::Error>> {
    let g = GgufModel::open(model)?;
    Ok(Tokenizer::from_gguf(g.metadata())?)
}

pub fn tokenize(model: &Path, text: Option<String>, file: Option<&Path>, no_bos: bool, special: bool) -> Result<(), Box<dyn std::error::Error>> {
    let text = match (text, file) {
        (Some(t), None) => t,
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
        _ => return Err("give exactly one of --text and --file".into()),
    };
    let tok = tokenizer(model)?;
    let ids = tok.encode(&text, !no_bos, special)?;
    println!("{}", serde_json::json!({ "ids": ids }));
    Ok(())
}

pub fn detokenize(model: &Path, ids: &[u32]) -> Result<(), Box<dyn std::error::Error>> {
    let tok = tokenizer(model)?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= tok.n_vocab()) {
        return Err(format!("token id {bad} is out of range (vocabulary has {} tokens)", tok.n_vocab()).into());
    }
    println!("{}", serde_json::json!({ "text": tok.decode(ids, true) }));
    Ok(())
}
