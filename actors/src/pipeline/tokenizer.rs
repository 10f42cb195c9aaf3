//! The tokenizer actor: text or chat messages in, token ids out.
//!
//! Messages: [`TokenizerMsg::Encode`] only, answered on its reply port. It holds no
//! per-request state: each request is encoded on a blocking thread of its own, so a long
//! prompt does not hold up the short ones behind it.

use std::sync::Arc;

use odmoe::tokenizer::{ChatTemplate, Tokenizer};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub use crate::server::request::Input;

/// Why a request could not be tokenized; both are the client's to fix.
#[derive(Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The prompt is longer than allowed (known before tokenizing all of it).
    TooLong(String),
    /// Bad template input, or a model without a template.
    Invalid(String),
}

/// The tokenizer actor's messages.
pub enum TokenizerMsg {
    /// Tokenize a prompt that may have at most the given number of tokens.
    Encode(Input, usize, RpcReplyPort<Result<Vec<u32>, EncodeError>>),
}

/// Tokenizes prompts and renders chat templates.
pub struct TokenizerActor;

/// The model's tokenizer and chat template, shared by the encodings in flight.
pub struct Encoder {
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    /// Bytes of the longest token's text: a text of `n` bytes has at least
    /// `n / longest` tokens.
    longest: usize,
}

impl Encoder {
    /// An encoder for `tokenizer` and `template`.
    pub fn new(tokenizer: Arc<Tokenizer>, template: Option<ChatTemplate>) -> Encoder {
        let longest = (0..tokenizer.n_vocab() as u32).map(|id| tokenizer.token_bytes(id, true).len()).max().unwrap_or(1).max(1);
        Encoder { tokenizer, template, longest }
    }

    /// Token ids of `input`, refused unread when its text is too long to fit in `limit`
    /// tokens whatever it says (a megabyte of prompt costs seconds to tokenize).
    pub fn encode(&self, input: Input, limit: usize) -> Result<Vec<u32>, EncodeError> {
        let (text, plain, special) = match input {
            Input::Prompt(text) => (text, Vec::new(), false),
            Input::Chat { messages, tools } => {
                let template = self.template.as_ref().ok_or_else(|| EncodeError::Invalid("this model has no chat template; use /v1/completions".into()))?;
                // the messages' own text never becomes control tokens
                let (text, plain) = template.render_json_spans(&messages, true, tools.as_ref()).map_err(|e| EncodeError::Invalid(e.to_string()))?;
                (text, plain, true)
            }
        };
        let fewest = text.len() / self.longest;
        if fewest > limit {
            return Err(EncodeError::TooLong(format!("the prompt has at least {fewest} tokens; this server accepts at most {limit}")));
        }
        self.tokenizer.encode_spans(&text, true, special, &plain).map_err(|e| EncodeError::Invalid(e.to_string()))
    }
}

impl Actor for TokenizerActor {
    type Msg = TokenizerMsg;
    type State = Arc<Encoder>;
    type Arguments = Encoder;

    async fn pre_start(&self, _: ActorRef<TokenizerMsg>, encoder: Encoder) -> Result<Arc<Encoder>, ActorProcessingErr> {
        Ok(Arc::new(encoder))
    }

    async fn handle(&self, _: ActorRef<TokenizerMsg>, msg: TokenizerMsg, encoder: &mut Arc<Encoder>) -> Result<(), ActorProcessingErr> {
        match msg {
            TokenizerMsg::Encode(input, limit, reply) => {
                // on a blocking thread: one long prompt must not hold up the short ones
                // behind it (the callers' permits still bound how many run at once)
                let encoder = encoder.clone();
                tokio::task::spawn_blocking(move || {
                    // the caller may have gone; nothing to do then
                    let _ = reply.send(encoder.encode(input, limit));
                });
            }
        }
        Ok(())
    }
}
