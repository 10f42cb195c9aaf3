//! The tokenizer actor: text or chat messages in, token ids out.
//!
//! Messages: [`TokenizerMsg::Encode`] only, answered on its reply port. It holds no
//! per-request state, so requests are independent and answered in arrival order.

use std::sync::Arc;

use odmoe::tokenizer::{ChatTemplate, Tokenizer};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

/// What to tokenize.
#[derive(Debug)]
pub enum Input {
    /// A raw prompt (`/v1/completions`): BOS added as the model asks, special-token text
    /// kept as plain text.
    Prompt(String),
    /// Chat messages (`/v1/chat/completions`) rendered with the model's chat template,
    /// with the assistant turn opened; `tools` passed to the template when given.
    Chat { messages: Value, tools: Option<Value> },
}

/// The tokenizer actor's messages.
pub enum TokenizerMsg {
    /// Tokenize; errors are messages for the client (bad template input, no template).
    Encode(Input, RpcReplyPort<Result<Vec<u32>, String>>),
}

/// Tokenizes prompts and renders chat templates.
pub struct TokenizerActor;

/// The actor's state: the model's tokenizer and chat template.
pub struct TokenizerState {
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
}

impl TokenizerState {
    fn encode(&self, input: Input) -> Result<Vec<u32>, String> {
        match input {
            Input::Prompt(text) => self.tokenizer.encode(&text, true, false).map_err(|e| e.to_string()),
            Input::Chat { messages, tools } => {
                let template = self.template.as_ref().ok_or("this model has no chat template; use /v1/completions")?;
                let text = template.render_json(&messages, true, tools.as_ref()).map_err(|e| e.to_string())?;
                self.tokenizer.encode(&text, true, true).map_err(|e| e.to_string())
            }
        }
    }
}

impl Actor for TokenizerActor {
    type Msg = TokenizerMsg;
    type State = TokenizerState;
    type Arguments = (Arc<Tokenizer>, Option<ChatTemplate>);

    async fn pre_start(&self, _: ActorRef<TokenizerMsg>, (tokenizer, template): Self::Arguments) -> Result<TokenizerState, ActorProcessingErr> {
        Ok(TokenizerState { tokenizer, template })
    }

    async fn handle(&self, _: ActorRef<TokenizerMsg>, msg: TokenizerMsg, state: &mut TokenizerState) -> Result<(), ActorProcessingErr> {
        match msg {
            TokenizerMsg::Encode(input, reply) => {
                // the caller may have gone; nothing to do then
                let _ = reply.send(state.encode(input));
            }
        }
        Ok(())
    }
}
