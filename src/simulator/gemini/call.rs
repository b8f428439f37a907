//! What a Gemini call asks for beyond the chat request it becomes: the
//! route's method and the reply's Gemini-only details. It imports nothing,
//! so answer.rs's `Api::Gemini` can carry it without reaching up into the
//! Gemini routes, which themselves build on answer.rs.

/// What one Gemini call asks for beyond the chat request it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// The model id, without `models/`.
    pub model: String,
    pub method: Method,
    /// Tokens read from the explicit cache the request names (`cachedContent`).
    pub explicit_cached: u64,
    /// `thoughtsTokenCount` of the reply (a thinking budget was given).
    pub thoughts: u64,
    /// `responseMimeType: text/x.enum`: the answer is the bare label.
    pub enum_text: bool,
}

/// The method after the colon of `models/{model}:{method}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Generate,
    Stream,
    EmbedOne,
    EmbedBatch,
}
